//! Credentials and TLS for every nacosctl command, and the `login`, `logout`, `user`
//! and `role` commands.
//!
//! A command's token is, in order: `--token`; a login with `--user` and `--password`
//! made for this command; with `--cert`, none (the client certificate is the
//! credential); the token `nacosctl login` cached in
//! `$XDG_CONFIG_HOME/nacosctl/token` (else `~/.config/nacosctl/token`, mode 0600) if
//! it has not expired; none (fine while the cluster runs without --auth).

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use nacosd::pb;
use nacosd::pb::auth_service_client::AuthServiceClient;
use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Flags every command takes.
#[derive(Args, Clone)]
pub struct Credentials {
    /// A token from `nacosctl login` (or AuthService/Login).
    #[arg(long, global = true, env = "NACOSCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Log in as this user for this command (with --password).
    #[arg(long, global = true, env = "NACOSCTL_USER")]
    pub user: Option<String>,
    /// The user's password (prefer the environment variable or stdin: a flag shows in
    /// the process list).
    #[arg(long, global = true, env = "NACOSCTL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Connect with TLS, trusting this CA (PEM). An https:// endpoint also means TLS.
    #[arg(long, global = true, env = "NACOSCTL_CA")]
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the endpoint's host].
    #[arg(long, global = true, env = "NACOSCTL_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// A client certificate (PEM) signed by the node's --client-ca: act as the user its
    /// common name names, with no token (with --key; implies TLS).
    #[arg(long, global = true, env = "NACOSCTL_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "NACOSCTL_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A channel to `endpoint` (host:port or a URL), with TLS when asked for.
pub async fn channel(
    endpoint: &str,
    creds: &Credentials,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Channel, String> {
    let tls = creds.ca.is_some() || creds.cert.is_some() || endpoint.starts_with("https://");
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .connect_timeout(connect_timeout)
        .timeout(timeout);
    if tls {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &creds.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("CA file {}: {e}", ca.display()))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(name) = &creds.tls_server_name {
            config = config.domain_name(name.clone());
        }
        if let (Some(cert), Some(key)) = (&creds.cert, &creds.key) {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        ep = ep.tls_config(config).map_err(|e| format!("TLS: {e}"))?;
    }
    ep.connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e:?}"))
}

/// The token this command sends (see the module docs).
pub async fn token(channel: &Channel, creds: &Credentials) -> Result<Option<String>, String> {
    if let Some(t) = &creds.token {
        return Ok(Some(t.clone()));
    }
    if let Some(user) = &creds.user {
        let password = match &creds.password {
            Some(p) => p.clone(),
            None => read_password("password")?,
        };
        return login(channel, user, &password).await.map(|(t, _)| Some(t));
    }
    if creds.cert.is_some() {
        return Ok(None);
    }
    Ok(load_cached())
}

pub fn bearer(token: Option<String>) -> Result<Bearer, String> {
    token
        .map(|t| {
            format!("Bearer {t}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| "the token has characters a header cannot carry".to_string())
        })
        .transpose()
        .map(Bearer)
}

async fn login(channel: &Channel, user: &str, password: &str) -> Result<(String, i64), String> {
    let r = AuthServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            username: user.to_string(),
            password: password.to_string(),
        })
        .await
        .map_err(|s| format!("login: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    Ok((r.token, r.expires_at_ms))
}

/// One line from stdin (a prompt goes to stderr when stdin is a terminal).
fn read_password(what: &str) -> Result<String, String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprint!("{what}: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the {what}: {e}"))?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        return Err(format!("no {what} given (flag, environment or stdin)"));
    }
    Ok(p)
}

#[derive(Serialize, Deserialize)]
struct Cached {
    endpoint: String,
    token: String,
    expires_at_ms: i64,
}

fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("nacosctl").join("token"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn load_cached() -> Option<String> {
    let text = std::fs::read_to_string(cache_path()?).ok()?;
    let c: Cached = serde_json::from_str(&text).ok()?;
    (c.expires_at_ms > now_ms()).then_some(c.token)
}

fn save_cached(c: &Cached) -> Result<PathBuf, String> {
    let path = cache_path().ok_or("no HOME or XDG_CONFIG_HOME to keep the token in")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string(c).map_err(|e| e.to_string())?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(
        &mut opts
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?,
        text.as_bytes(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// `nacosctl login`: log in and cache the token.
pub async fn login_command(
    channel: &Channel,
    endpoint: &str,
    creds: &Credentials,
) -> Result<(), String> {
    let user = match &creds.user {
        Some(u) => u.clone(),
        None => return Err("login needs --user (or NACOSCTL_USER)".into()),
    };
    let password = match &creds.password {
        Some(p) => p.clone(),
        None => read_password("password")?,
    };
    let (token, expires_at_ms) = login(channel, &user, &password).await?;
    let path = save_cached(&Cached {
        endpoint: endpoint.to_string(),
        token,
        expires_at_ms,
    })?;
    let left = Duration::from_millis((expires_at_ms - now_ms()).max(0) as u64);
    println!(
        "logged in as {user}; token valid for {}s, kept in {}",
        left.as_secs(),
        path.display()
    );
    Ok(())
}

pub fn logout_command() -> Result<(), String> {
    if let Some(path) = cache_path() {
        match std::fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user (password from --new-password or stdin).
    Add {
        name: String,
        /// A role to give (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long, env = "NACOSCTL_NEW_PASSWORD", hide_env_values = true)]
        new_password: Option<String>,
    },
    /// Delete a user; its tokens stop working at once.
    Remove { name: String },
    /// Set a user's password (yours, or anyone's as admin); earlier tokens stop working.
    Passwd {
        name: String,
        #[arg(long, env = "NACOSCTL_NEW_PASSWORD", hide_env_values = true)]
        new_password: Option<String>,
    },
    /// Replace a user's roles.
    Roles { name: String, roles: Vec<String> },
    /// Every user and its roles.
    List,
}

#[derive(Subcommand)]
pub enum RoleCommand {
    /// Create or replace a role. A grant is NAMESPACE:KIND:ACCESS, with KIND one of
    /// any, config, naming, db and ACCESS read or write (write includes read);
    /// NAMESPACE may be * (db grants must use *). Example: --grant dev:config:write.
    Put {
        name: String,
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// Delete a role no user has.
    Remove { name: String },
    /// Every role and its permissions (the built-in admin role first).
    List,
}

fn parse_grant(g: &str) -> Result<pb::Permission, String> {
    let mut parts = g.rsplitn(3, ':');
    let (Some(access), Some(kind), Some(namespace)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("grant {g:?} is not NAMESPACE:KIND:ACCESS"));
    };
    let kind = match kind {
        "any" | "*" => pb::ResourceKind::Any,
        "config" => pb::ResourceKind::Config,
        "naming" => pb::ResourceKind::Naming,
        "db" => pb::ResourceKind::Db,
        other => {
            return Err(format!(
                "grant {g:?}: kind {other:?} is not any, config, naming or db"
            ))
        }
    };
    let access = match access {
        "read" => pb::Access::Read,
        "write" => pb::Access::Write,
        other => {
            return Err(format!(
                "grant {g:?}: access {other:?} is not read or write"
            ))
        }
    };
    Ok(pb::Permission {
        namespace: namespace.to_string(),
        kind: kind as i32,
        access: access as i32,
    })
}

fn kind_name(k: i32) -> &'static str {
    match pb::ResourceKind::try_from(k) {
        Ok(pb::ResourceKind::Config) => "config",
        Ok(pb::ResourceKind::Naming) => "naming",
        Ok(pb::ResourceKind::Db) => "db",
        _ => "any",
    }
}

fn access_name(a: i32) -> &'static str {
    match pb::Access::try_from(a) {
        Ok(pb::Access::Write) => "write",
        _ => "read",
    }
}

fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn done(what: &str, r: pb::AuthChangeResponse) {
    println!("{what} (revision {})", r.revision);
}

pub async fn user_command(
    mut c: AuthServiceClient<Authed>,
    command: &UserCommand,
    json: bool,
) -> Result<(), String> {
    match command {
        UserCommand::Add {
            name,
            roles,
            new_password,
        } => {
            let password = match new_password {
                Some(p) => p.clone(),
                None => read_password("new password")?,
            };
            let r = c
                .create_user(pb::CreateUserRequest {
                    username: name.clone(),
                    password,
                    roles: roles.clone(),
                })
                .await
                .map_err(status_text)?;
            done(&format!("created user {name}"), r.into_inner());
        }
        UserCommand::Remove { name } => {
            let r = c
                .delete_user(pb::DeleteUserRequest {
                    username: name.clone(),
                })
                .await
                .map_err(status_text)?;
            done(&format!("removed user {name}"), r.into_inner());
        }
        UserCommand::Passwd { name, new_password } => {
            let password = match new_password {
                Some(p) => p.clone(),
                None => read_password("new password")?,
            };
            let r = c
                .change_password(pb::ChangePasswordRequest {
                    username: name.clone(),
                    new_password: password,
                })
                .await
                .map_err(status_text)?;
            done(&format!("changed the password of {name}"), r.into_inner());
        }
        UserCommand::Roles { name, roles } => {
            let r = c
                .set_user_roles(pb::SetUserRolesRequest {
                    username: name.clone(),
                    roles: roles.clone(),
                })
                .await
                .map_err(status_text)?;
            done(&format!("set the roles of {name}"), r.into_inner());
        }
        UserCommand::List => {
            let users = c
                .list_users(pb::ListUsersRequest {})
                .await
                .map_err(status_text)?
                .into_inner()
                .users;
            if json {
                let v: Vec<_> = users
                    .iter()
                    .map(|u| serde_json::json!({"username": u.username, "roles": u.roles}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
                );
            } else {
                println!("USER  ROLES");
                for u in users {
                    println!("{}  {}", u.username, u.roles.join(","));
                }
            }
        }
    }
    Ok(())
}

pub async fn role_command(
    mut c: AuthServiceClient<Authed>,
    command: &RoleCommand,
    json: bool,
) -> Result<(), String> {
    match command {
        RoleCommand::Put { name, grants } => {
            let permissions = grants
                .iter()
                .map(|g| parse_grant(g))
                .collect::<Result<Vec<_>, _>>()?;
            let r = c
                .put_role(pb::PutRoleRequest {
                    role: Some(pb::AuthRole {
                        name: name.clone(),
                        permissions,
                    }),
                })
                .await
                .map_err(status_text)?;
            done(&format!("stored role {name}"), r.into_inner());
        }
        RoleCommand::Remove { name } => {
            let r = c
                .delete_role(pb::DeleteRoleRequest { name: name.clone() })
                .await
                .map_err(status_text)?;
            done(&format!("removed role {name}"), r.into_inner());
        }
        RoleCommand::List => {
            let roles = c
                .list_roles(pb::ListRolesRequest {})
                .await
                .map_err(status_text)?
                .into_inner()
                .roles;
            let grants = |r: &pb::AuthRole| -> Vec<String> {
                r.permissions
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:{}:{}",
                            p.namespace,
                            kind_name(p.kind),
                            access_name(p.access)
                        )
                    })
                    .collect()
            };
            if json {
                let v: Vec<_> = roles
                    .iter()
                    .map(|r| serde_json::json!({"name": r.name, "grants": grants(r)}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
                );
            } else {
                println!("ROLE  GRANTS");
                for r in &roles {
                    println!("{}  {}", r.name, grants(r).join(" "));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_or_say_what_is_wrong() {
        let p = parse_grant("dev:config:write").unwrap();
        assert_eq!(p.namespace, "dev");
        assert_eq!(p.kind, pb::ResourceKind::Config as i32);
        assert_eq!(p.access, pb::Access::Write as i32);
        assert_eq!(parse_grant("*:db:read").unwrap().namespace, "*");
        assert!(parse_grant("dev:config")
            .unwrap_err()
            .contains("NAMESPACE:KIND:ACCESS"));
        assert!(parse_grant("dev:cfg:read").unwrap_err().contains("kind"));
        assert!(parse_grant("dev:config:admin")
            .unwrap_err()
            .contains("access"));
    }
}
