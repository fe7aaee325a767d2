//! The Cluster service: MemberList, MemberAdd (as a voter or a learner), MemberRemove,
//! MemberUpdate, MemberPromote (etcd `v3rpc/member.go`).
//!
//! Peer URLs are checked here as etcd's `types.NewURLs` checks them, so a malformed URL gets
//! "etcdserver: given member URLs are invalid" before anything is proposed; the membership
//! rules themselves (duplicate URLs, learner limits, promotion readiness) are the node's.

use ballot_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_server::Cluster,
};
use tonic::{Request, Response, Status};

use super::{Api, ApiNode, error, record};
use crate::metrics::GrpcMethod;

/// etcd `types.NewURLs`: at least one URL; each `http`/`https` with a host and a numeric port
/// and nothing after it (no path, query or fragment).
pub fn check_peer_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() || !urls.iter().all(|url| is_valid_peer_url(url)) {
        return Err(error::member_bad_urls());
    }
    Ok(())
}

fn is_valid_peer_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if scheme != "http" && scheme != "https" {
        return false;
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return false;
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty() && !host.contains(':')
    };
    host_ok && port.parse::<u16>().is_ok()
}

impl<N: ApiNode> Api<N> {
    pub(crate) async fn member_add(
        &self,
        req: MemberAddRequest,
    ) -> Result<MemberAddResponse, Status> {
        check_peer_urls(&req.peer_ur_ls)?;
        let (member, members) = self.node.member_add(req.peer_ur_ls, req.is_learner).await?;
        Ok(MemberAddResponse {
            header: self.current_header(),
            member: Some(member),
            members,
        })
    }

    pub(crate) async fn member_remove(
        &self,
        req: MemberRemoveRequest,
    ) -> Result<MemberRemoveResponse, Status> {
        let members = self.node.member_remove(req.id).await?;
        Ok(MemberRemoveResponse {
            header: self.current_header(),
            members,
        })
    }

    pub(crate) async fn member_update(
        &self,
        req: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse, Status> {
        check_peer_urls(&req.peer_ur_ls)?;
        let members = self.node.member_update(req.id, req.peer_ur_ls).await?;
        Ok(MemberUpdateResponse {
            header: self.current_header(),
            members,
        })
    }

    pub(crate) async fn member_list(
        &self,
        req: MemberListRequest,
    ) -> Result<MemberListResponse, Status> {
        let members = self.node.member_list(req.linearizable).await?;
        Ok(MemberListResponse {
            header: self.current_header(),
            members,
        })
    }

    pub(crate) async fn member_promote(
        &self,
        req: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, Status> {
        let members = self.node.member_promote(req.id).await?;
        Ok(MemberPromoteResponse {
            header: self.current_header(),
            members,
        })
    }
}

#[tonic::async_trait]
impl<N: ApiNode> Cluster for Api<N> {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let result = Api::member_add(self, request.into_inner()).await;
        record(GrpcMethod::ClusterMemberAdd, result).map(Response::new)
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let result = Api::member_remove(self, request.into_inner()).await;
        record(GrpcMethod::ClusterMemberRemove, result).map(Response::new)
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let result = Api::member_update(self, request.into_inner()).await;
        record(GrpcMethod::ClusterMemberUpdate, result).map(Response::new)
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let result = Api::member_list(self, request.into_inner()).await;
        record(GrpcMethod::ClusterMemberList, result).map(Response::new)
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let result = Api::member_promote(self, request.into_inner()).await;
        record(GrpcMethod::ClusterMemberPromote, result).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_checked_like_etcd() {
        for good in [
            "http://127.0.0.1:2380",
            "https://node1.example:2380",
            "http://[::1]:2380",
            "http://10.0.0.1:2380/",
        ] {
            assert!(is_valid_peer_url(good), "{good} should be accepted");
        }
        for bad in [
            "127.0.0.1:2380",
            "ftp://127.0.0.1:2380",
            "http://127.0.0.1",
            "http://127.0.0.1:port",
            "http://127.0.0.1:2380/path",
            "http://:2380",
            "http://::1:2380",
            "http://127.0.0.1:99999",
        ] {
            assert!(!is_valid_peer_url(bad), "{bad} should be refused");
        }
        let status = check_peer_urls(&[]).expect_err("an empty list is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "etcdserver: given member URLs are invalid"
        );
    }
}
