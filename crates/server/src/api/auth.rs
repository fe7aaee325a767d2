//! The Auth service. Ballot has no authentication: it answers as an etcd whose auth store is
//! empty and disabled (etcd `v3rpc/auth.go`, `auth/store.go`):
//!
//! - AuthStatus: disabled; AuthDisable: succeeds (it is idempotent in etcd);
//! - Authenticate: "etcdserver: authentication is not enabled";
//! - AuthEnable: "etcdserver: root user does not exist" (etcd refuses without a root user);
//! - reads of users and roles: empty lists, "user name not found", "role name not found";
//! - UserAdd and RoleAdd: Unimplemented, since Ballot cannot store them.

use ballot_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, auth_server::Auth,
};
use tonic::{Request, Response, Status};

use super::{Api, ApiNode, error, record};
use crate::metrics::GrpcMethod;

fn user_not_found() -> Status {
    Status::failed_precondition("etcdserver: user name not found")
}

fn role_not_found() -> Status {
    Status::failed_precondition("etcdserver: role name not found")
}

fn not_supported() -> Status {
    Status::unimplemented("ballot: users and roles are not supported (authentication is disabled)")
}

fn answer<T>(result: Result<T, Status>) -> Result<Response<T>, Status> {
    record(GrpcMethod::AuthAny, result).map(Response::new)
}

#[tonic::async_trait]
impl<N: ApiNode> Auth for Api<N> {
    async fn auth_enable(
        &self,
        _request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        answer(Err(Status::failed_precondition(
            "etcdserver: root user does not exist",
        )))
    }

    async fn auth_disable(
        &self,
        _request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        answer(Ok(AuthDisableResponse {
            header: self.current_header(),
        }))
    }

    async fn auth_status(
        &self,
        _request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        answer(Ok(AuthStatusResponse {
            header: self.current_header(),
            enabled: false,
            auth_revision: 0,
        }))
    }

    async fn authenticate(
        &self,
        _request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        answer(Err(error::auth_not_enabled()))
    }

    async fn user_add(
        &self,
        _request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        answer(Err(not_supported()))
    }

    async fn user_get(
        &self,
        _request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        answer(Err(user_not_found()))
    }

    async fn user_list(
        &self,
        _request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        answer(Ok(AuthUserListResponse {
            header: self.current_header(),
            users: Vec::new(),
        }))
    }

    async fn user_delete(
        &self,
        _request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        answer(Err(user_not_found()))
    }

    async fn user_change_password(
        &self,
        _request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        answer(Err(user_not_found()))
    }

    async fn user_grant_role(
        &self,
        _request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        answer(Err(user_not_found()))
    }

    async fn user_revoke_role(
        &self,
        _request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        answer(Err(user_not_found()))
    }

    async fn role_add(
        &self,
        _request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        answer(Err(not_supported()))
    }

    async fn role_get(
        &self,
        _request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        answer(Err(role_not_found()))
    }

    async fn role_list(
        &self,
        _request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        answer(Ok(AuthRoleListResponse {
            header: self.current_header(),
            roles: Vec::new(),
        }))
    }

    async fn role_delete(
        &self,
        _request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        answer(Err(role_not_found()))
    }

    async fn role_grant_permission(
        &self,
        _request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        answer(Err(role_not_found()))
    }

    async fn role_revoke_permission(
        &self,
        _request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        answer(Err(role_not_found()))
    }
}
