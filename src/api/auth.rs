//! `nacosd.v1.AuthService`: login, users and roles. Every call but Login and WhoAmI
//! needs the admin role (ChangePassword also accepts the user's own token).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::deadline;
use crate::auth::model::{self, Access, Permission, Resource, Role, ADMIN_ROLE};
use crate::auth::{password, Auth};
use crate::consistency::ReadLevel;
use crate::error::{Error, Result};
use crate::pb;

pub struct AuthApi {
    auth: Arc<Auth>,
}

impl AuthApi {
    pub fn new(auth: Arc<Auth>) -> Self {
        AuthApi { auth }
    }
}

fn check_roles(roles: &[String]) -> Result<()> {
    roles
        .iter()
        .try_for_each(|r| model::check_name("role name", r))
}

fn role_of(r: pb::AuthRole) -> Result<Role> {
    let permissions = r
        .permissions
        .into_iter()
        .map(|p| {
            let resource = match pb::ResourceKind::try_from(p.kind) {
                Ok(pb::ResourceKind::Any) => None,
                Ok(pb::ResourceKind::Config) => Some(Resource::Config),
                Ok(pb::ResourceKind::Naming) => Some(Resource::Naming),
                Ok(pb::ResourceKind::Db) => Some(Resource::Db),
                Err(_) => {
                    return Err(Error::invalid(format!(
                        "kind {} is not a resource kind",
                        p.kind
                    )))
                }
            };
            let access = match pb::Access::try_from(p.access) {
                Ok(pb::Access::Read) => Access::Read,
                Ok(pb::Access::Write) => Access::Write,
                Err(_) => {
                    return Err(Error::invalid(format!(
                        "access {} is not read or write",
                        p.access
                    )))
                }
            };
            Ok(Permission {
                namespace: p.namespace,
                resource,
                access,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    model::check_role(Role {
        name: r.name,
        permissions,
    })
}

fn pb_role(r: Role) -> pb::AuthRole {
    pb::AuthRole {
        name: r.name,
        permissions: r
            .permissions
            .into_iter()
            .map(|p| pb::Permission {
                namespace: p.namespace,
                kind: match p.resource {
                    None => pb::ResourceKind::Any,
                    Some(Resource::Config) => pb::ResourceKind::Config,
                    Some(Resource::Naming) => pb::ResourceKind::Naming,
                    Some(Resource::Db) => pb::ResourceKind::Db,
                } as i32,
                access: match p.access {
                    Access::Read => pb::Access::Read,
                    Access::Write => pb::Access::Write,
                } as i32,
            })
            .collect(),
    }
}

fn changed(revision: u64) -> std::result::Result<Response<pb::AuthChangeResponse>, Status> {
    Ok(Response::new(pb::AuthChangeResponse { revision }))
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> std::result::Result<Response<pb::LoginResponse>, Status> {
        let from = crate::conns::ConnInfo::of(&req)
            .and_then(|c| c.remote_addr())
            .map(|a| a.ip());
        let r = req.into_inner();
        if r.username.is_empty() || r.password.is_empty() {
            return Err(Error::invalid("username and password are required").into());
        }
        let (token, exp_ms) = self.auth.login(&r.username, &r.password, from).await?;
        Ok(Response::new(pb::LoginResponse {
            token,
            expires_at_ms: exp_ms as i64,
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> std::result::Result<Response<pb::WhoAmIResponse>, Status> {
        match self.auth.authenticate(&req).await? {
            crate::auth::Principal::Anyone => Err(Error::FailedPrecondition(
                "authentication is off on this node (start it with --auth)".into(),
            )
            .into()),
            crate::auth::Principal::User(u) => Ok(Response::new(pb::WhoAmIResponse {
                username: u.name,
                roles: u.roles,
                expires_at_ms: u.exp_ms as i64,
            })),
        }
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> std::result::Result<Response<pb::AuthChangeResponse>, Status> {
        let timeout = deadline(&req);
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("creating a user")?;
        let r = req.into_inner();
        model::check_name("user name", &r.username)?;
        model::check_password(&r.password)?;
        check_roles(&r.roles)?;
        let create = model::CreateUser {
            username: r.username,
            password_hash: password::hash(r.password).await?,
            roles: r.roles,
        };
        changed(self.auth.client().mutate(create, timeout).await?)
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> std::result::Result<Response<pb::AuthChangeResponse>, Status> {
        let timeout = deadline(&req);
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("deleting a user")?;
        let r = req.into_inner();
        model::check_name("user name", &r.username)?;
        let delete = model::DeleteUser {
            username: r.username,
        };
        changed(self.auth.client().mutate(delete, timeout).await?)
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> std::result::Result<Response<pb::AuthChangeResponse>, Status> {
        let timeout = deadline(&req);
        let caller = self.auth.authenticate(&req).await?;
        let r = req.into_inner();
        model::check_name("user name", &r.username)?;
        if caller.user_name() != Some(r.username.as_str()) {
            caller.require_admin("changing another user's password")?;
        }
        model::check_password(&r.new_password)?;
        let set = model::SetPassword {
            username: r.username,
            password_hash: password::hash(r.new_password).await?,
        };
        changed(self.auth.client().mutate(set, timeout).await?)
    }

    async fn set_user_roles(
        &self,
        req: Request<pb::SetUserRolesRequest>,
    ) -> std::result::Result<Response<pb::AuthChangeResponse>, Status> {
        let timeout = deadline(&req);
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("changing a user's roles")?;
        let r = req.into_inner();
        model::check_name("user name", &r.username)?;
        check_roles(&r.roles)?;
        let set = model::SetRoles {
            username: r.username,
            roles: r.roles,
        };
        changed(self.auth.client().mutate(set, timeout).await?)
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> std::result::Result<Response<pb::ListUsersResponse>, Status> {
        let timeout = deadline(&req);
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("listing users")?;
        let users = self
            .auth
            .client()
            .query(model::ListUsers, ReadLevel::Linearizable, timeout)
            .await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users
                .into_iter()
                .map(|(username, u)| pb::User {
                    username,
                    roles: u.roles,
                })
                .collect(),
        }))
    }

    async fn put_role(
        &self,
        req: Request<pb::PutRoleRequest>,
    ) -> std::result::Result<Response<pb::AuthChangeResponse>, Status> {
        let timeout = deadline(&req);
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("changing a role")?;
        let role = req
            .into_inner()
            .role
            .ok_or_else(|| Error::invalid("role is required"))?;
        let put = model::PutRole {
            role: role_of(role)?,
        };
        changed(self.auth.client().mutate(put, timeout).await?)
    }

    async fn delete_role(
        &self,
        req: Request<pb::DeleteRoleRequest>,
    ) -> std::result::Result<Response<pb::AuthChangeResponse>, Status> {
        let timeout = deadline(&req);
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("deleting a role")?;
        let r = req.into_inner();
        model::check_name("role name", &r.name)?;
        if r.name == ADMIN_ROLE {
            return Err(Error::invalid("the admin role is built in and cannot be deleted").into());
        }
        let delete = model::DeleteRole { name: r.name };
        changed(self.auth.client().mutate(delete, timeout).await?)
    }

    async fn list_roles(
        &self,
        req: Request<pb::ListRolesRequest>,
    ) -> std::result::Result<Response<pb::ListRolesResponse>, Status> {
        let timeout = deadline(&req);
        self.auth
            .authenticate(&req)
            .await?
            .require_admin("listing roles")?;
        let roles = self
            .auth
            .client()
            .query(model::ListRoles, ReadLevel::Linearizable, timeout)
            .await?;
        let admin = Role {
            name: ADMIN_ROLE.into(),
            permissions: vec![Permission {
                namespace: "*".into(),
                resource: None,
                access: Access::Write,
            }],
        };
        Ok(Response::new(pb::ListRolesResponse {
            roles: std::iter::once(admin).chain(roles).map(pb_role).collect(),
        }))
    }
}
