//! Reading and writing bbolt files: etcd's backend database, which is what `etcdctl snapshot
//! save` writes when it backs up etcd. Ballot reads one to import an etcd cluster's data
//! (`ballot snapshot restore` of an etcd backup, [`crate::etcd_backup`]), and writes one as its
//! own backup (the Maintenance `Snapshot` stream), so etcd's tools read Ballot's backups.
//!
//! The layout, as bbolt 1.3 writes it on little-endian machines (every machine etcd ships
//! for):
//!
//! ```text
//! page        id u64 | flags u16 (1 branch, 2 leaf, 4 meta, 0x10 freelist) | count u16
//!             | overflow u32 (pages that follow this one as part of it) | elements...
//! meta        magic u32 0xED0CDAED | version u32 2 | page size u32 | flags u32
//!             | root bucket (root page u64, sequence u64) | freelist page u64
//!             | high-water page u64 | txid u64 | FNV-1a 64 of the 56 bytes before it
//! branch elem position u32 (from the element) | key size u32 | child page u64
//! leaf elem   flags u32 (1: the value is a bucket) | position u32 | key size u32 | value size u32
//! bucket      root page u64 | sequence u64; root page 0: an inline bucket, whose page follows
//!             in the value itself
//! ```
//!
//! Pages 0 and 1 are the two meta pages; the valid one with the higher transaction ID is the
//! current one. Everything read from the file is checked before use: a damaged or foreign file
//! gives a [`BoltError`] naming what is wrong, never a panic or an endless walk.

use std::collections::HashSet;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
/// The page size [`write`] uses (etcd's, on the machines it runs on).
pub const PAGE_SIZE: usize = 4096;
const BUCKET_LEAF: u32 = 0x01;
/// The meta fields the checksum covers (all before it).
const META_CHECKED: usize = 56;
/// No real B+tree is this deep; a deeper one is a loop.
const DEPTH_MAX: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BoltError {
    #[error("not a bbolt database ({0})")]
    NotBolt(String),
    #[error("damaged bbolt database: {0}")]
    Damaged(String),
}

fn damaged(message: impl Into<String>) -> BoltError {
    BoltError::Damaged(message.into())
}

/// An open bbolt file, in memory.
pub struct BoltFile<'a> {
    data: &'a [u8],
    page_size: usize,
    /// Pages below this are in use (the meta's high-water mark).
    page_count: u64,
    root: Root<'a>,
}

/// Where a bucket's B+tree starts.
#[derive(Clone, Copy)]
enum Root<'a> {
    Page(u64),
    /// An inline bucket's page, inside its parent's leaf value.
    Inline(&'a [u8]),
}

/// A bucket of a [`BoltFile`].
pub struct Bucket<'f, 'a> {
    file: &'f BoltFile<'a>,
    root: Root<'a>,
}

/// One key of a bucket, in key order.
pub struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The value is a nested bucket's header.
    pub is_bucket: bool,
}

impl<'a> BoltFile<'a> {
    /// Whether `data` starts as a bbolt file does (a meta page with bbolt's magic).
    pub fn looks_like_bolt(data: &[u8]) -> bool {
        u16_at(data, 8) == Some(META_PAGE) && u32_at(data, PAGE_HEADER) == Some(MAGIC)
    }

    /// Opens `data` at its current meta page.
    pub fn open(data: &'a [u8]) -> Result<BoltFile<'a>, BoltError> {
        if !Self::looks_like_bolt(data) {
            return Err(BoltError::NotBolt("no bbolt meta page at the start".into()));
        }
        let page_size = u32_at(data, PAGE_HEADER + 8).unwrap_or(0) as usize;
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(damaged(format!("page size {page_size}")));
        }
        let metas: Vec<Meta> = [0, page_size]
            .into_iter()
            .filter_map(|offset| Meta::read(data, offset, page_size).ok())
            .collect();
        let Some(meta) = metas.into_iter().max_by_key(|meta| meta.txid) else {
            return Err(damaged(
                "neither meta page is valid (bad magic, version or checksum)",
            ));
        };
        if (data.len() / page_size) < 2 {
            return Err(damaged("shorter than its two meta pages"));
        }
        Ok(BoltFile {
            data,
            page_size,
            page_count: meta.page_count,
            root: Root::Page(meta.root),
        })
    }

    /// The top-level bucket `name`, if there is one.
    pub fn bucket<'f>(&'f self, name: &[u8]) -> Result<Option<Bucket<'f, 'a>>, BoltError> {
        let top = Bucket {
            file: self,
            root: self.root,
        };
        top.nested(name)
    }

    /// The bytes of page `id`, overflow pages included.
    fn page(&self, id: u64) -> Result<&'a [u8], BoltError> {
        if id < 2 || id >= self.page_count {
            return Err(damaged(format!(
                "a reference to page {id} (pages in use: 2 to {})",
                self.page_count.saturating_sub(1)
            )));
        }
        let start = usize::try_from(id)
            .ok()
            .and_then(|id| id.checked_mul(self.page_size))
            .ok_or_else(|| damaged(format!("page {id} is out of reach")))?;
        let overflow = u32_at(self.data, start + 12)
            .ok_or_else(|| damaged(format!("page {id} is past the end of the file")))?;
        let end = (u64::from(overflow) + 1)
            .checked_mul(self.page_size as u64)
            .and_then(|len| usize::try_from(len).ok())
            .and_then(|len| start.checked_add(len))
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| damaged(format!("page {id} runs past the end of the file")))?;
        let page = &self.data[start..end];
        if u64_at(page, 0) != Some(id) {
            return Err(damaged(format!("page {id} does not carry its own ID")));
        }
        Ok(page)
    }
}

impl<'f, 'a> Bucket<'f, 'a> {
    /// The bucket `name` inside this one, if there is one.
    pub fn nested(&self, name: &[u8]) -> Result<Option<Bucket<'f, 'a>>, BoltError> {
        let mut found = None;
        self.for_each(|entry| {
            if entry.key == name && found.is_none() {
                found = Some((entry.value, entry.is_bucket));
            }
            Ok(())
        })?;
        match found {
            None => Ok(None),
            Some((_, false)) => Err(damaged(format!(
                "{:?} is a key, not a bucket",
                String::from_utf8_lossy(name)
            ))),
            Some((value, true)) => {
                let root = u64_at(value, 0)
                    .filter(|_| value.len() >= BUCKET_HEADER)
                    .ok_or_else(|| damaged("a bucket header is cut short"))?;
                let root = if root == 0 {
                    Root::Inline(&value[BUCKET_HEADER..])
                } else {
                    Root::Page(root)
                };
                Ok(Some(Bucket {
                    file: self.file,
                    root,
                }))
            }
        }
    }

    /// Calls `visit` with every key of the bucket, in key order.
    pub fn for_each(
        &self,
        mut visit: impl FnMut(Entry<'a>) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        let mut seen = HashSet::new();
        match self.root {
            Root::Inline(page) => walk_page(self.file, page, 0, &mut seen, &mut visit),
            Root::Page(id) => {
                let page = self.file.page(id)?;
                seen.insert(id);
                walk_page(self.file, page, 0, &mut seen, &mut visit)
            }
        }
    }
}

fn walk_page<'a>(
    file: &BoltFile<'a>,
    page: &'a [u8],
    depth: usize,
    seen: &mut HashSet<u64>,
    visit: &mut impl FnMut(Entry<'a>) -> Result<(), BoltError>,
) -> Result<(), BoltError> {
    if depth > DEPTH_MAX {
        return Err(damaged("a B+tree deeper than any bbolt writes"));
    }
    let flags = u16_at(page, 8).ok_or_else(|| damaged("a page header is cut short"))?;
    let count = usize::from(u16_at(page, 10).unwrap_or(0));
    for index in 0..count {
        let at = PAGE_HEADER + index * ELEMENT;
        let field = |offset: usize| {
            u32_at(page, at + offset)
                .map(|value| value as usize)
                .ok_or_else(|| damaged("a page's elements run past its end"))
        };
        match flags {
            BRANCH_PAGE => {
                let (position, key_len) = (field(0)?, field(4)?);
                slice(page, at, position, key_len)?;
                let child = u64_at(page, at + 8).unwrap_or(0);
                if !seen.insert(child) {
                    return Err(damaged(format!("page {child} is referenced twice")));
                }
                let child_page = file.page(child)?;
                walk_page(file, child_page, depth + 1, seen, visit)?;
            }
            LEAF_PAGE => {
                let (leaf_flags, position, key_len, value_len) =
                    (field(0)?, field(4)?, field(8)?, field(12)?);
                let key = slice(page, at, position, key_len)?;
                let value = slice(page, at, position + key_len, value_len)?;
                visit(Entry {
                    key,
                    value,
                    is_bucket: leaf_flags as u32 & BUCKET_LEAF != 0,
                })?;
            }
            other => {
                return Err(damaged(format!(
                    "a B+tree page with flags {other:#x} (neither branch nor leaf)"
                )));
            }
        }
    }
    Ok(())
}

/// `len` bytes at `position` from the element at `element` in `page`.
fn slice(page: &[u8], element: usize, position: usize, len: usize) -> Result<&[u8], BoltError> {
    element
        .checked_add(position)
        .and_then(|start| Some((start, start.checked_add(len)?)))
        .and_then(|(start, end)| page.get(start..end))
        .ok_or_else(|| damaged("a key or value runs past its page"))
}

struct Meta {
    root: u64,
    page_count: u64,
    txid: u64,
}

impl Meta {
    fn read(data: &[u8], page_offset: usize, page_size: usize) -> Result<Meta, BoltError> {
        let at = page_offset + PAGE_HEADER;
        let bytes = data
            .get(at..at + META_CHECKED + 8)
            .ok_or_else(|| damaged("a meta page is cut short"))?;
        let field = |offset: usize| u64_at(bytes, offset).unwrap_or(0);
        let checksum = fnv1a64(&bytes[..META_CHECKED]);
        if u32_at(bytes, 0) != Some(MAGIC)
            || u32_at(bytes, 4) != Some(VERSION)
            || u32_at(bytes, 8) != Some(page_size as u32)
            || field(META_CHECKED) != checksum
        {
            return Err(damaged("invalid meta page"));
        }
        Ok(Meta {
            root: field(16),
            page_count: field(40),
            txid: field(48),
        })
    }
}

/// A key and its value: a [`BucketSource`] of them in memory.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A bucket to write: its entries in ascending key order, read by index, so a file is written
/// page by page without its entries ever being held encoded all at once.
pub trait BucketSource {
    fn entry_count(&self) -> usize;
    /// Key and value lengths of entry `index`.
    fn entry_len(&self, index: usize) -> (usize, usize);
    /// Appends the key of entry `index` to `out`.
    fn key(&self, index: usize, out: &mut Vec<u8>);
    /// Appends the value of entry `index` to `out`.
    fn value(&self, index: usize, out: &mut Vec<u8>);
}

impl BucketSource for Vec<KeyValue> {
    fn entry_count(&self) -> usize {
        Vec::len(self)
    }

    fn entry_len(&self, index: usize) -> (usize, usize) {
        (self[index].0.len(), self[index].1.len())
    }

    fn key(&self, index: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self[index].0);
    }

    fn value(&self, index: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self[index].1);
    }
}

/// Where every page of a bbolt file goes, planned from its entries' sizes alone; the meta pages
/// at the front name the root and the page count, so the plan comes before the first byte.
///
/// The layout is bbolt 1.3's: meta pages 0 and 1 (transactions 2 and 1), an empty freelist at
/// page 2, then each bucket's B+tree (leaves packed up to a page, an entry larger than a page
/// on overflow pages, branches above them), and the root bucket's leaf last. bbolt opens it as
/// a database whose every page is in use. Bucket names and keys must be in ascending byte order;
/// no nested buckets.
pub struct Layout {
    trees: Vec<TreeLayout>,
    /// The root bucket's entries: each bucket's name and header (its root page).
    root_entries: Vec<KeyValue>,
    root_tree: TreeLayout,
    pages: u64,
}

struct TreeLayout {
    leaves: Vec<LeafPage>,
    /// Branch pages in the order they are written: level by level, from the leaves up.
    branches: Vec<BranchPage>,
    root: u64,
}

struct LeafPage {
    id: u64,
    chunk: Chunk,
}

struct BranchPage {
    id: u64,
    bytes: usize,
    /// Each child's first key and page.
    children: Vec<(Vec<u8>, u64)>,
}

/// The first page after the two meta pages and the freelist.
const FIRST_TREE_PAGE: u64 = 3;

impl Layout {
    pub fn plan(buckets: &[(&[u8], &dyn BucketSource)]) -> Layout {
        let mut next_page = FIRST_TREE_PAGE;
        let mut trees = Vec::with_capacity(buckets.len());
        let mut root_entries = Vec::with_capacity(buckets.len());
        for (name, source) in buckets {
            let tree = plan_tree(*source, &mut next_page);
            let mut header = Vec::with_capacity(BUCKET_HEADER);
            header.extend_from_slice(&tree.root.to_le_bytes());
            header.extend_from_slice(&0u64.to_le_bytes());
            root_entries.push((name.to_vec(), header));
            trees.push(tree);
        }
        let root_tree = plan_tree(&root_entries, &mut next_page);
        Layout {
            trees,
            root_entries,
            root_tree,
            pages: next_page,
        }
    }

    /// The file's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }

    /// Writes the file of `buckets`, the ones this layout was planned from, to `out`, one page
    /// (with its overflow pages) at a time.
    pub fn write_to(
        &self,
        buckets: &[(&[u8], &dyn BucketSource)],
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        assert_eq!(buckets.len(), self.trees.len(), "the buckets planned");
        out.write_all(&self.meta_pages())?;
        let mut page = Vec::with_capacity(PAGE_SIZE);
        for ((_, source), tree) in buckets.iter().zip(&self.trees) {
            write_tree(*source, 0, tree, &mut page, out)?;
        }
        write_tree(
            &self.root_entries,
            BUCKET_LEAF,
            &self.root_tree,
            &mut page,
            out,
        )
    }

    /// Pages 0 to 2: the meta pages of transactions 2 and 1, and an empty freelist.
    fn meta_pages(&self) -> Vec<u8> {
        let mut pages = vec![0u8; 3 * PAGE_SIZE];
        for (page, txid) in [(0u64, 2u64), (1, 1)] {
            let at = page as usize * PAGE_SIZE;
            put_page_header(&mut pages[at..], page, META_PAGE, 0, 0);
            let mut meta = Vec::with_capacity(META_CHECKED + 8);
            meta.extend_from_slice(&MAGIC.to_le_bytes());
            meta.extend_from_slice(&VERSION.to_le_bytes());
            meta.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            meta.extend_from_slice(&0u32.to_le_bytes());
            meta.extend_from_slice(&self.root_tree.root.to_le_bytes());
            meta.extend_from_slice(&0u64.to_le_bytes());
            meta.extend_from_slice(&2u64.to_le_bytes());
            meta.extend_from_slice(&self.pages.to_le_bytes());
            meta.extend_from_slice(&txid.to_le_bytes());
            let checksum = fnv1a64(&meta);
            meta.extend_from_slice(&checksum.to_le_bytes());
            pages[at + PAGE_HEADER..at + PAGE_HEADER + meta.len()].copy_from_slice(&meta);
        }
        put_page_header(&mut pages[2 * PAGE_SIZE..], 2, FREELIST_PAGE, 0, 0);
        pages
    }
}

/// Plans a B+tree of `source`'s entries from `next_page` on.
fn plan_tree(source: &dyn BucketSource, next_page: &mut u64) -> TreeLayout {
    let mut take_pages = |bytes: usize| {
        let id = *next_page;
        *next_page += bytes.div_ceil(PAGE_SIZE).max(1) as u64;
        id
    };
    let mut leaves = Vec::new();
    let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
    for chunk in chunks(source.entry_count(), |index| {
        let (key, value) = source.entry_len(index);
        ELEMENT + key + value
    }) {
        let id = take_pages(chunk.bytes);
        let mut first = Vec::new();
        if chunk.len() > 0 {
            source.key(chunk.start, &mut first);
        }
        level.push((first, id));
        leaves.push(LeafPage { id, chunk });
    }
    let mut branches = Vec::new();
    while level.len() > 1 {
        let children = std::mem::take(&mut level);
        for chunk in chunks(children.len(), |index| ELEMENT + children[index].0.len()) {
            let id = take_pages(chunk.bytes);
            level.push((children[chunk.start].0.clone(), id));
            branches.push(BranchPage {
                id,
                bytes: chunk.bytes,
                children: children[chunk.start..chunk.end].to_vec(),
            });
        }
    }
    TreeLayout {
        leaves,
        branches,
        root: level[0].1,
    }
}

/// Writes the pages of `tree` (leaf elements with `flags`), built one at a time in `page`.
fn write_tree(
    source: &dyn BucketSource,
    flags: u32,
    tree: &TreeLayout,
    page: &mut Vec<u8>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    for leaf in &tree.leaves {
        let chunk = &leaf.chunk;
        start_page(page, leaf.id, chunk.bytes, LEAF_PAGE, chunk.len());
        let mut data = PAGE_HEADER + chunk.len() * ELEMENT;
        for (slot, index) in (chunk.start..chunk.end).enumerate() {
            let element = PAGE_HEADER + slot * ELEMENT;
            let position = (data - element) as u32;
            let key_at = page.len();
            source.key(index, page);
            let value_at = page.len();
            source.value(index, page);
            let (key_len, value_len) = (value_at - key_at, page.len() - value_at);
            debug_assert_eq!((key_len, value_len), source.entry_len(index));
            // The entry was appended after the page; it belongs at `data`.
            page.copy_within(key_at.., data);
            page.truncate(key_at);
            page[element..element + 4].copy_from_slice(&flags.to_le_bytes());
            page[element + 4..element + 8].copy_from_slice(&position.to_le_bytes());
            page[element + 8..element + 12].copy_from_slice(&(key_len as u32).to_le_bytes());
            page[element + 12..element + 16].copy_from_slice(&(value_len as u32).to_le_bytes());
            data += key_len + value_len;
        }
        out.write_all(page)?;
    }
    for branch in &tree.branches {
        start_page(
            page,
            branch.id,
            branch.bytes,
            BRANCH_PAGE,
            branch.children.len(),
        );
        let mut data = PAGE_HEADER + branch.children.len() * ELEMENT;
        for (slot, (key, child)) in branch.children.iter().enumerate() {
            let element = PAGE_HEADER + slot * ELEMENT;
            let position = (data - element) as u32;
            page[element..element + 4].copy_from_slice(&position.to_le_bytes());
            page[element + 4..element + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
            page[element + 8..element + 16].copy_from_slice(&child.to_le_bytes());
            page[data..data + key.len()].copy_from_slice(key);
            data += key.len();
        }
        out.write_all(page)?;
    }
    Ok(())
}

/// A run of elements written to one page (with its overflow pages).
struct Chunk {
    start: usize,
    end: usize,
    /// The page's bytes: header, elements and their data.
    bytes: usize,
}

impl Chunk {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Splits `count` elements (`size(i)`: element header and data of element `i`) into pages:
/// as many as fit in one page, at least one per page. No elements give one empty page.
fn chunks(count: usize, size: impl Fn(usize) -> usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = PAGE_HEADER;
    for index in 0..count {
        let more = size(index);
        if index > start && bytes + more > PAGE_SIZE {
            chunks.push(Chunk {
                start,
                end: index,
                bytes,
            });
            start = index;
            bytes = PAGE_HEADER;
        }
        bytes += more;
    }
    chunks.push(Chunk {
        start,
        end: count,
        bytes,
    });
    chunks
}

/// Makes `page` a zeroed page `id` (with overflow pages for `bytes`) with its header.
fn start_page(page: &mut Vec<u8>, id: u64, bytes: usize, flags: u16, count: usize) {
    let pages = bytes.div_ceil(PAGE_SIZE).max(1);
    page.clear();
    page.resize(pages * PAGE_SIZE, 0);
    put_page_header(page, id, flags, count as u16, (pages - 1) as u32);
}

fn put_page_header(page: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
    page[..8].copy_from_slice(&id.to_le_bytes());
    page[8..10].copy_from_slice(&flags.to_le_bytes());
    page[10..12].copy_from_slice(&count.to_le_bytes());
    page[12..16].copy_from_slice(&overflow.to_le_bytes());
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a bbolt file holding `buckets` (see [`Layout`]) in memory.
    fn write(buckets: &[(&[u8], Vec<KeyValue>)]) -> Vec<u8> {
        let sources: Vec<(&[u8], &dyn BucketSource)> = buckets
            .iter()
            .map(|(name, entries)| (*name, entries as &dyn BucketSource))
            .collect();
        let layout = Layout::plan(&sources);
        let mut file = Vec::with_capacity(layout.size_bytes() as usize);
        layout
            .write_to(&sources, &mut file)
            .expect("writing to memory cannot fail");
        file
    }

    /// The backup tests/etcd_import.rs restores, made by etcd 3.4 (see make-etcd-backup.sh).
    fn backup() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/etcd-3.4-backup.db");
        let mut bytes = std::fs::read(path).expect("the etcd backup fixture");
        bytes.truncate(bytes.len() - 32); // etcdctl's SHA-256
        bytes
    }

    fn keys(bucket: &Bucket<'_, '_>) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        bucket
            .for_each(|entry| {
                keys.push(entry.key.to_vec());
                Ok(())
            })
            .unwrap();
        keys
    }

    #[test]
    fn etcds_buckets_read_in_key_order() {
        let data = backup();
        let file = BoltFile::open(&data).unwrap();
        let top = Bucket {
            file: &file,
            root: file.root,
        };
        let names: Vec<String> = keys(&top)
            .iter()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        for name in ["key", "lease", "meta", "members"] {
            assert!(names.iter().any(|found| found == name), "{names:?}");
        }
        // 308 changes: revisions 2 to 309 with two at 7, less the one compacted away.
        let revisions = keys(&file.bucket(b"key").unwrap().unwrap());
        assert_eq!(revisions.len(), 308);
        assert!(revisions.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(keys(&file.bucket(b"lease").unwrap().unwrap()).len(), 1);
        assert!(file.bucket(b"no such bucket").unwrap().is_none());
    }

    fn entries(bucket: &Bucket<'_, '_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut entries = Vec::new();
        bucket
            .for_each(|entry| {
                assert!(!entry.is_bucket);
                entries.push((entry.key.to_vec(), entry.value.to_vec()));
                Ok(())
            })
            .unwrap();
        entries
    }

    #[test]
    fn a_written_file_reads_back_bucket_by_bucket() {
        // Enough entries for three levels of branches, values from empty to several pages.
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..60_000u32)
            .map(|i| {
                let value = match i % 1000 {
                    0 => vec![b'x'; 3 * PAGE_SIZE + 17],
                    1 => Vec::new(),
                    n => n.to_be_bytes().repeat(usize::try_from(n % 7).unwrap()),
                };
                (i.to_be_bytes().to_vec(), value)
            })
            .collect();
        let small = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
        ];
        let data = write(&[
            (&b"empty"[..], Vec::new()),
            (&b"many"[..], many.clone()),
            (&b"small"[..], small.clone()),
        ]);
        assert_eq!(data.len() % PAGE_SIZE, 0);
        let sources: [(&[u8], &dyn BucketSource); 3] = [
            (b"empty", &Vec::<KeyValue>::new()),
            (b"many", &many),
            (b"small", &small),
        ];
        assert_eq!(
            Layout::plan(&sources).size_bytes(),
            data.len() as u64,
            "as planned"
        );
        let file = BoltFile::open(&data).unwrap();
        assert_eq!(entries(&file.bucket(b"many").unwrap().unwrap()), many);
        assert_eq!(entries(&file.bucket(b"small").unwrap().unwrap()), small);
        assert!(entries(&file.bucket(b"empty").unwrap().unwrap()).is_empty());
        assert!(file.bucket(b"other").unwrap().is_none());
        // Both meta pages are valid; the current one is transaction 2, on page 0.
        let meta = |page: usize| Meta::read(&data, page * PAGE_SIZE, PAGE_SIZE).unwrap();
        assert_eq!((meta(0).txid, meta(1).txid), (2, 1));
        assert_eq!(meta(0).page_count, (data.len() / PAGE_SIZE) as u64);
    }

    #[test]
    fn damaged_and_foreign_files_are_refused_without_panicking() {
        let data = backup();
        assert!(matches!(
            BoltFile::open(b"BALLOTMV and more"),
            Err(BoltError::NotBolt(_))
        ));
        let mut metas_broken = data.clone();
        metas_broken[16 + 20] ^= 1;
        metas_broken[4096 + 16 + 20] ^= 1;
        assert!(matches!(
            BoltFile::open(&metas_broken),
            Err(BoltError::Damaged(_))
        ));
        // Damage anywhere past the metas: every outcome is an answer, none a panic.
        for offset in (2 * 4096..data.len()).step_by(97) {
            let mut damaged = data.clone();
            damaged[offset] = damaged[offset].wrapping_add(0x5b);
            if let Ok(file) = BoltFile::open(&damaged) {
                for name in [&b"key"[..], b"lease", b"meta"] {
                    if let Ok(Some(bucket)) = file.bucket(name) {
                        let _ = bucket.for_each(|_| Ok(()));
                    }
                }
            }
        }
        let truncated = &data[..3 * 4096];
        let file = BoltFile::open(truncated).unwrap();
        assert!(file.bucket(b"key").is_err());
    }
}
