// Checks that the etcd3 Node.js client (https://www.npmjs.com/package/etcd3, over @grpc/grpc-js)
// works unchanged against a three-member cluster: Ballot or, for comparison, etcd itself.
//
// usage: node check.js HOST:PORT,HOST:PORT,HOST:PORT
//
// Every check asserts what etcd answers; the script exits 1 if any fails. Waits are bounded
// polls on the condition itself, never sleeps standing in for synchronisation; the only timed
// wait is the lease test, where time is what is being tested.
'use strict';
const { Etcd3, EtcdLeaseInvalidError, EtcdLockFailedError } = require('etcd3');

const endpoints = (process.argv[2] || '').split(',').filter(Boolean);
if (endpoints.length === 0) {
  console.error('usage: node check.js HOST:PORT[,HOST:PORT...]');
  process.exit(2);
}
const hosts = endpoints.map((e) => 'http://' + e);
const client = new Etcd3({ hosts });
const prefix = '/client-check-node/';
let failures = 0;

function check(condition, what) {
  console.log(`${condition ? 'ok  ' : 'FAIL'} ${what}`);
  if (!condition) failures += 1;
}

async function until(what, condition, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

async function errorOf(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    return err;
  }
}

async function kv() {
  // A write through each member: followers forward to the leader.
  for (const [i, host] of hosts.entries()) {
    const one = new Etcd3({ hosts: host });
    await one.put(`${prefix}member/${i}`).value(`via ${host}`);
    one.close();
  }
  const viaMembers = await client.getAll().prefix(`${prefix}member/`).strings();
  check(Object.keys(viaMembers).length === hosts.length, `a put through each of the ${hosts.length} members is read back`);

  const first = await client.put(`${prefix}k`).value('v1').exec();
  const second = await client.put(`${prefix}k`).value('v2').exec();
  check(Number(second.header.revision) === Number(first.header.revision) + 1, 'each put adds one to the revision');
  check((await client.get(`${prefix}k`).string()) === 'v2', 'get returns the latest value');
  check(
    (await client.get(`${prefix}k`).revision(first.header.revision).string()) === 'v1',
    'get at an earlier revision returns the value then',
  );

  await client.put(`${prefix}r/b`).value('2');
  await client.put(`${prefix}r/a`).value('1');
  await client.put(`${prefix}r/c`).value('3');
  const keys = await client.getAll().prefix(`${prefix}r/`).keys();
  check(JSON.stringify(keys) === JSON.stringify([`${prefix}r/a`, `${prefix}r/b`, `${prefix}r/c`]), 'a prefix range comes back in key order');
  const desc = await client.getAll().prefix(`${prefix}r/`).sort('Key', 'Descend').limit(2).keys();
  check(JSON.stringify(desc) === JSON.stringify([`${prefix}r/c`, `${prefix}r/b`]), 'sort descending with a limit');
  check((await client.getAll().prefix(`${prefix}r/`).count()) === 3, 'count of a prefix');

  const deleted = await client.delete().key(`${prefix}r/a`).getPrevious();
  check(deleted.length === 1 && deleted[0].value.toString() === '1', 'delete returns the previous key-value');
  check((await client.get(`${prefix}r/a`).string()) === null, 'a deleted key is gone');

  const swapped = await client
    .if(`${prefix}k`, 'Value', '==', 'v2')
    .then(client.put(`${prefix}k`).value('v3'))
    .else(client.get(`${prefix}k`))
    .commit();
  check(swapped.succeeded && (await client.get(`${prefix}k`).string()) === 'v3', 'txn: a matching compare runs the success branch');
  const missed = await client
    .if(`${prefix}k`, 'Value', '==', 'nope')
    .then(client.put(`${prefix}k`).value('wrong'))
    .else(client.get(`${prefix}k`))
    .commit();
  check(
    !missed.succeeded && missed.responses[0].response_range.kvs[0].value.toString() === 'v3',
    'txn: a failed compare runs the failure branch',
  );

  const big = await errorOf(client.put(`${prefix}big`).value(Buffer.alloc(1600 * 1024)));
  check(big !== null && big.message.includes('etcdserver: request is too large'), `a 1.6 MiB put is refused: ${big && big.message}`);
  check((await client.get(`${prefix}k`).string()) === 'v3', 'the cluster still serves after the refused request');

  const compactAt = (await client.put(`${prefix}c`).value('x').exec()).header.revision;
  await client.put(`${prefix}c`).value('y');
  await client.kv.compact({ revision: compactAt, physical: true });
  const old = await errorOf(client.get(`${prefix}c`).revision(Number(compactAt) - 1).string());
  check(
    old !== null && old.message.includes('etcdserver: mvcc: required revision has been compacted'),
    `a read below the compaction is refused: ${old && old.message}`,
  );
}

async function leases() {
  const lease = client.lease(2);
  await lease.put(`${prefix}leased`).value('x');
  const id = await lease.grant();
  const ttl = await client.leaseClient.leaseTimeToLive({ ID: id, keys: true });
  check(Number(ttl.TTL) > 0 && Number(ttl.TTL) <= 2, `time-to-live of a 2 s lease: ${ttl.TTL}`);
  check(ttl.keys.map(String).includes(`${prefix}leased`), 'time-to-live lists the attached key');
  // The client keeps the lease alive; the key outlives the lease's TTL.
  await new Promise((resolve) => setTimeout(resolve, 3500));
  check((await client.get(`${prefix}leased`).string()) === 'x', 'a kept-alive lease keeps its key past its TTL');
  await lease.revoke();
  check((await client.get(`${prefix}leased`).string()) === null, 'revoking the lease deletes its key');
  const revokedTtl = await client.leaseClient.leaseTimeToLive({ ID: id });
  check(Number(revokedTtl.TTL) === -1, `a revoked lease's TTL is -1: ${revokedTtl.TTL}`);
  const again = await errorOf(client.leaseClient.leaseRevoke({ ID: id }));
  check(again instanceof EtcdLeaseInvalidError, `revoking it again: ${again && again.message}`);

  // A lease nobody keeps alive expires and takes its key with it.
  const lapsing = client.lease(1, { autoKeepAlive: false });
  await lapsing.put(`${prefix}lapsing`).value('y');
  check(
    await until('the key of an expired lease is deleted', async () => (await client.get(`${prefix}lapsing`).string()) === null),
    'a lease that is not kept alive expires and its key is deleted',
  );
  lapsing.release();
}

async function watches() {
  const start = (await client.put(`${prefix}w/a`).value('0').exec()).header.revision;
  const seen = [];
  const watcher = await client.watch().prefix(`${prefix}w/`).withPreviousKV().create();
  watcher.on('put', (kv, previous) => seen.push(`put ${kv.key}=${kv.value} prev=${previous ? previous.value : ''}`));
  watcher.on('delete', (kv) => seen.push(`delete ${kv.key}`));
  await client.put(`${prefix}w/a`).value('1');
  await client.put(`${prefix}w/b`).value('2');
  await client.delete().key(`${prefix}w/a`);
  const expected = [`put ${prefix}w/a=1 prev=0`, `put ${prefix}w/b=2 prev=`, `delete ${prefix}w/a`];
  await until('three events', async () => seen.length >= 3);
  check(JSON.stringify(seen) === JSON.stringify(expected), `watch a prefix with previous values: ${JSON.stringify(seen)}`);
  await watcher.cancel();

  const replayed = [];
  const history = await client.watch().key(`${prefix}w/a`).startRevision(String(start)).create();
  history.on('put', (kv) => replayed.push(`${kv.value}`));
  await until('two historic puts', async () => replayed.length >= 2);
  check(JSON.stringify(replayed) === '["0","1"]', `watch from a past revision replays history: ${JSON.stringify(replayed)}`);
  await history.cancel();
}

async function locksAndElections() {
  // This client's locks do not queue: a lock held elsewhere fails at once (a compare on the
  // lock key's create revision), and succeeds once the holder releases it.
  const first = client.lock(`${prefix}lock`);
  await first.acquire();
  const busy = await errorOf(client.lock(`${prefix}lock`).acquire());
  check(busy instanceof EtcdLockFailedError, `a held lock is refused to another client: ${busy && busy.message}`);
  await first.release();
  const second = client.lock(`${prefix}lock`);
  check((await errorOf(second.acquire())) === null, 'after the release another client takes the lock');
  await second.release();

  const election = client.election(`${prefix}election`);
  const campaign = election.campaign('node-a');
  await new Promise((resolve, reject) => {
    campaign.on('elected', resolve);
    campaign.on('error', reject);
  });
  check((await election.leader()) === 'node-a', 'the campaigning client is the leader');
  await campaign.proclaim('node-a2');
  check((await election.leader()) === 'node-a2', 'proclaim changes the leader value');
  await campaign.resign();
  check((await election.leader()) === undefined, 'after resigning there is no leader');
}

async function cluster() {
  const status = await client.maintenance.status();
  check(/^3\./.test(status.version) && status.leader !== '0', `status: version ${status.version}, leader ${status.leader}`);
  const members = await client.cluster.memberList({});
  check(members.members.length === hosts.length, `member list has ${members.members.length} members`);
  check(
    members.members.every((m) => m.name && m.clientURLs.length > 0 && m.peerURLs.length > 0),
    'every member has a name, client and peer URLs',
  );
}

(async () => {
  try {
    await client.delete().prefix(prefix);
    await kv();
    await leases();
    await watches();
    await locksAndElections();
    await cluster();
    await client.delete().prefix(prefix);
  } catch (err) {
    console.log(`FAIL unexpected error: ${err && err.stack}`);
    failures += 1;
  } finally {
    client.close();
  }
  console.log(failures === 0 ? 'node client: all checks passed' : `node client: ${failures} check(s) failed`);
  process.exit(failures === 0 ? 0 : 1);
})();
