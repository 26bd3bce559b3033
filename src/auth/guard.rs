//! Who is calling, and may they: the check every client-port handler makes first.
//!
//! [`Auth::authenticate`] turns a call's `authorization: Bearer <token>` metadata, or
//! failing that the client certificate of its connection (the user its common name
//! names, on a client port with `--client-ca`), into a [`Principal`] (or
//! UNAUTHENTICATED); [`Principal::require`] and
//! [`Principal::require_admin`] answer PERMISSION_DENIED for what its roles do not
//! allow. With auth off, every call is [`Principal::Anyone`] and allowed.
//!
//! Each check reads the user and the roles from this node's copy of the config group
//! (a local read; a user not found locally, or whose password changed, is read again
//! linearizably, so a token issued by a node that is ahead is accepted at once). A
//! role change therefore takes effect on a node as soon as it applies it; a deleted
//! user or a changed password invalidates the user's tokens everywhere.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::metadata::{Ascii, MetadataValue};

use crate::auth::limit::{LimitedBy, LoginLimiter};
use crate::auth::model::*;
use crate::auth::{password, token};
use crate::config::AuthConfig;
use crate::conns::ConnInfo;
use crate::consistency::ReadLevel;
use crate::error::{Error, Result};
use crate::groups::client::GroupClient;
use crate::metrics::Metrics;
use crate::raft::node::MultiRaft;
use crate::tls::ClientCert;

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Auth is off: everything is allowed.
    Anyone,
    User(User),
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub roles: Vec<String>,
    pub admin: bool,
    pub permissions: Vec<Permission>,
    /// When the credential stops being valid: the token's expiry, or the end of the
    /// client certificate's validity.
    pub exp_ms: u64,
}

impl Principal {
    /// `access` to `resource` in `namespace`, or PERMISSION_DENIED saying which.
    pub fn require(&self, resource: Resource, access: Access, namespace: &str) -> Result<()> {
        let Principal::User(u) = self else {
            return Ok(());
        };
        if u.admin
            || u.permissions
                .iter()
                .any(|p| p.allows(resource, access, namespace))
        {
            return Ok(());
        }
        let scope = match resource {
            Resource::Db => String::new(),
            _ => format!(" in namespace {namespace:?}"),
        };
        Err(Error::PermissionDenied(format!(
            "user {:?} may not {access} {resource}{scope}: no role of the user grants it",
            u.name
        )))
    }

    /// The admin role, for `what` (cluster operations, users and roles).
    pub fn require_admin(&self, what: &str) -> Result<()> {
        match self {
            Principal::Anyone => Ok(()),
            Principal::User(u) if u.admin => Ok(()),
            Principal::User(u) => Err(Error::PermissionDenied(format!(
                "{what} needs the admin role, which user {:?} does not have",
                u.name
            ))),
        }
    }

    pub fn user_name(&self) -> Option<&str> {
        match self {
            Principal::Anyone => None,
            Principal::User(u) => Some(&u.name),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Authentication for one node's client port.
pub struct Auth {
    enabled: bool,
    token_ttl: Duration,
    client: GroupClient,
    /// The cluster's signing key, once read (it never changes).
    key: OnceLock<Vec<u8>>,
    limiter: LoginLimiter,
    metrics: Arc<Metrics>,
}

const NO_TOKEN: &str = "this call needs a token: log in (AuthService/Login or `nacosctl login`) and send it as `authorization: Bearer <token>`, or connect with a client certificate where the node accepts them";

impl Auth {
    pub fn new(node: Arc<MultiRaft>, config: &AuthConfig) -> Arc<Self> {
        Arc::new(Auth {
            enabled: config.enabled,
            token_ttl: config.token_ttl,
            metrics: node.metrics.clone(),
            limiter: LoginLimiter::new(config.login_limits),
            client: GroupClient::new(node),
            key: OnceLock::new(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn client(&self) -> &GroupClient {
        &self.client
    }

    async fn signing_key(&self) -> Result<Vec<u8>> {
        if let Some(k) = self.key.get() {
            return Ok(k.clone());
        }
        let mut key = self
            .client
            .query(GetSigningKey, ReadLevel::Stale, None)
            .await?;
        if key.is_none() {
            key = self
                .client
                .query(GetSigningKey, ReadLevel::Linearizable, None)
                .await?;
        }
        let key = key.ok_or_else(|| {
            Error::unavailable(
                "authentication is not ready: the cluster's signing key is created once the config group has a leader",
            )
        })?;
        Ok(self.key.get_or_init(|| key).clone())
    }

    async fn user(&self, name: &str, generation: Option<u64>) -> Result<Option<UserRecord>> {
        let get = || GetUser {
            username: name.to_string(),
        };
        let local = self.client.query(get(), ReadLevel::Stale, None).await?;
        let current = |u: &Option<UserRecord>| {
            u.as_ref()
                .is_some_and(|u| generation.is_none_or(|g| g == u.generation))
        };
        if current(&local) {
            return Ok(local);
        }
        self.client
            .query(get(), ReadLevel::Linearizable, None)
            .await
    }

    /// The caller of a request: the user of its `authorization` token if it has one,
    /// else the user its connection's client certificate names, else
    /// UNAUTHENTICATED. A token wins over a certificate, so a client with a
    /// certificate can still act as another user by logging in.
    ///
    /// Not an `async fn`: the credential is copied out of the request first, so the
    /// future does not borrow the request (a streaming request is not `Sync`).
    pub fn authenticate<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> impl std::future::Future<Output = Result<Principal>> + Send + '_ {
        let token = req.metadata().get("authorization").cloned();
        let cert = ConnInfo::of(req).and_then(|c| c.client_cert.clone());
        async move {
            if !self.enabled {
                return Ok(Principal::Anyone);
            }
            match (token, cert) {
                (Some(token), _) => self.token_user(&token).await,
                (None, Some(cert)) => self.certificate_user(&cert).await,
                (None, None) => Err(Error::Unauthenticated(NO_TOKEN.into())),
            }
        }
    }

    async fn token_user(&self, value: &MetadataValue<Ascii>) -> Result<Principal> {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                Error::Unauthenticated("the authorization metadata is not `Bearer <token>`".into())
            })?;
        let key = self.signing_key().await?;
        let claims = token::verify(&key, token, now_ms()).map_err(|e| match e {
            token::TokenError::Expired => {
                Error::Unauthenticated("the token has expired: log in again".into())
            }
            token::TokenError::Invalid => Error::Unauthenticated(
                "the token is not valid (malformed, or not issued by this cluster): log in again"
                    .into(),
            ),
        })?;
        let user = self
            .user(&claims.sub, Some(claims.generation))
            .await?
            .filter(|u| u.generation == claims.generation)
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "the token is no longer valid (its user was removed or changed password): log in again"
                        .into(),
                )
            })?;
        self.principal(claims.sub, user, claims.exp_ms).await
    }

    /// The user a verified client certificate names by its subject common name.
    async fn certificate_user(&self, cert: &ClientCert) -> Result<Principal> {
        let Some(name) = &cert.common_name else {
            return Err(Error::Unauthenticated(
                "the client certificate names no user: its subject needs exactly one common name (CN), the user name"
                    .into(),
            ));
        };
        let user = self.user(name, None).await?.ok_or_else(|| {
            Error::Unauthenticated(format!(
                "the client certificate names user {name:?}, which does not exist: an admin creates it (nacosctl user add), or log in with a token"
            ))
        })?;
        self.principal(name.clone(), user, cert.not_after_ms).await
    }

    /// A user with the permissions of its roles as this node knows them now.
    async fn principal(&self, name: String, user: UserRecord, exp_ms: u64) -> Result<Principal> {
        let admin = user.roles.iter().any(|r| r == ADMIN_ROLE);
        let permissions = if admin {
            Vec::new()
        } else {
            let roles = self.client.query(ListRoles, ReadLevel::Stale, None).await?;
            roles
                .into_iter()
                .filter(|r| user.roles.contains(&r.name))
                .flat_map(|r| r.permissions)
                .collect()
        };
        Ok(Principal::User(User {
            name,
            roles: user.roles,
            admin,
            permissions,
            exp_ms,
        }))
    }

    /// A token for `username` if `password` is right. A wrong name and a wrong
    /// password get the same answer, after the same work. Failed logins are limited
    /// per user name and per client address `from` (see `auth::limit`): beyond the
    /// limit, RESOURCE_EXHAUSTED saying when to retry, before any password is checked.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> Result<(String, u64)> {
        if !self.enabled {
            return Err(Error::FailedPrecondition(
                "authentication is off on this node (start it with --auth)".into(),
            ));
        }
        // First, so that a login before the cluster's auth bootstrap is UNAVAILABLE and
        // costs no failure (the bootstrap creates the key and the first admin at once).
        let key = self.signing_key().await?;
        if let Err(refused) = self.limiter.try_begin(username, from, Instant::now()) {
            self.metrics.login_refused(match refused.by {
                LimitedBy::User => "user",
                LimitedBy::Address => "address",
            });
            tracing::info!(user = username, from = ?from, limit = ?refused.by, "login refused: too many failures");
            return Err(Error::ResourceExhausted(refused.message()));
        }
        let user = match self.user(username, None).await {
            Ok(user) => user,
            Err(e) => {
                // Not a failed login: the node could not look.
                self.limiter.succeeded(username, from, Instant::now());
                return Err(e);
            }
        };
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let verified = password::verify(password.to_string(), hash).await;
        let user = match user {
            Some(user) if verified => user,
            _ => return Err(Error::Unauthenticated("wrong user name or password".into())),
        };
        self.limiter.succeeded(username, from, Instant::now());
        let exp_ms = now_ms() + self.token_ttl.as_millis() as u64;
        let claims = token::Claims {
            sub: username.to_string(),
            generation: user.generation,
            exp_ms,
        };
        Ok((token::sign(&key, &claims), exp_ms))
    }

    /// Make sure the cluster has a signing key, and an `admin` user if it has no
    /// users and `admin_password` is given. Retries until it is applied or `stop`.
    pub async fn bootstrap(
        &self,
        admin_password: Option<String>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let admin_password_hash = match admin_password {
            Some(p) => match password::hash(p).await {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!(error = %e, "hashing the initial admin password");
                    None
                }
            },
            None => None,
        };
        loop {
            let attempt = async {
                let b = Bootstrap {
                    signing_key: token::new_key().map_err(Error::from)?,
                    admin_password_hash: admin_password_hash.clone(),
                };
                self.client.mutate(b, None).await
            };
            match attempt.await {
                Ok(done) => {
                    if done.admin_created {
                        tracing::info!("auth: created the first admin user \"admin\" from the initial admin password");
                    } else if admin_password_hash.is_some() {
                        tracing::info!("auth: the cluster already has users; the initial admin password is not used");
                    }
                    if done.key_created {
                        tracing::info!("auth: created the cluster's token signing key");
                    }
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "auth bootstrap not applied yet; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
