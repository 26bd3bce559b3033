//! Issue #18: TLS on the client port, mutual TLS between peers, certificate reload,
//! the plaintext-cluster refusal, and client authentication and authorization.
//!
//! Certificates are made by `deploy/gen-dev-certs.sh` (the openssl CLI), so the script
//! the docs point operators to is exercised too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::common::*;
use nacosd::codec;
use nacosd::config::Config;
use nacosd::pb;
use nacosd::peer::channels::{Lane, PeerChannels};
use nacosd::peer::PeerClient;
use nacosd::raft::identity::{Identity, IdentityCell};
use nacosd::raft::types::{TypeConfig, Vote};
use nacosd::tls::{CertFiles, Reloading};

/// Run `deploy/gen-dev-certs.sh` into `dir` for `names`.
pub fn gen_certs(dir: &Path, names: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gen-dev-certs.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(dir)
        .args(names)
        .output()
        .expect("run deploy/gen-dev-certs.sh (needs the openssl CLI)");
    assert!(
        out.status.success(),
        "gen-dev-certs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn node_files(dir: &Path, name: &str, with_ca: bool) -> CertFiles {
    CertFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        ca: with_ca.then(|| dir.join("ca.pem")),
    }
}

fn certs_dir() -> (tempfile::TempDir, PathBuf) {
    let td = tempfile::tempdir().expect("tempdir");
    let dir = td.path().join("certs");
    gen_certs(&dir, &["n1", "n2", "n3"]);
    (td, dir)
}

/// A TLS handshake with `addr` that trusts `ca`, returning the server's certificate.
async fn handshake(addr: SocketAddr, ca: &Path) -> std::io::Result<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

async fn health(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("check: {e:?}"))
}

fn tls_endpoint(addr: SocketAddr, ca: &Path) -> Endpoint {
    let ca = std::fs::read(ca).unwrap();
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_port_serves_tls_to_clients_that_trust_the_ca() {
    let (_td, dir) = certs_dir();
    let (_other_td, other) = certs_dir();
    let c = TestCluster::start(1, with_kv, |cfg| {
        cfg.client_tls = Some(node_files(&dir, "n1", false))
    })
    .await;
    let addr = c.server(1).client_addr;

    health(tls_endpoint(addr, &dir.join("ca.pem")))
        .await
        .expect("a client that trusts the CA is served");
    let err = health(tls_endpoint(addr, &other.join("ca.pem")))
        .await
        .expect_err("a client that trusts another CA must fail");
    assert!(err.contains("connect"), "{err}");
    let err = health(Endpoint::from_shared(format!("http://{addr}")).unwrap())
        .await
        .expect_err("plaintext must fail on a TLS port");
    assert!(!err.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_certificates_are_used_for_new_connections() {
    let (_td, dir) = certs_dir();
    let c = TestCluster::start(1, with_kv, |cfg| {
        cfg.client_tls = Some(node_files(&dir, "n1", false))
    })
    .await;
    let addr = c.server(1).client_addr;
    let ca = dir.join("ca.pem");
    let before = first_cert(&dir.join("n1.pem"));
    assert_eq!(handshake(addr, &ca).await.unwrap(), before);
    let open = tls_endpoint(addr, &ca).connect().await.unwrap();

    // A second run issues new certificates under the same CA, renamed into place.
    gen_certs(&dir, &["n1"]);
    let after = first_cert(&dir.join("n1.pem"));
    assert_ne!(before, after, "the script made a new certificate");
    assert_eq!(
        handshake(addr, &ca).await.unwrap(),
        after,
        "a new connection gets the new certificate, without a restart"
    );
    // A connection made before the rotation keeps working.
    tonic_health::pb::health_client::HealthClient::new(open)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("an open connection survives the rotation");

    // A broken file (a half-finished rotation) keeps the last good certificate.
    std::fs::write(dir.join("n1.pem"), "not a certificate").unwrap();
    assert_eq!(handshake(addr, &ca).await.unwrap(), after);
    c.shutdown().await;
}

fn mtls(dir: &Path) -> impl Fn(&mut Config) + '_ {
    move |cfg: &mut Config| {
        cfg.insecure_peer = false;
        cfg.peer_tls = Some(node_files(dir, &format!("n{}", cfg.node_id), true));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_need_a_certificate_signed_by_the_cluster_ca() {
    let (_td, dir) = certs_dir();
    let (_rogue_td, rogue) = certs_dir();
    let c = TestCluster::start(3, with_kv, mtls(&dir)).await;
    let leader = c.wait_for_leader(KV).await;
    put(c.node(leader), KV, "k", "v")
        .await
        .expect("a write commits over mutual TLS");
    let follower = c.other_than(leader);
    let cluster_id = c.node(leader).identity().cluster_id().unwrap();
    let addr = c.nodes[&follower].config.advertise_peer.clone();
    let term = c.metrics(follower, KV).current_term;

    // An impostor that knows the cluster id and a member's node id asks for a vote in
    // a much higher term: with no certificate, and with one from another CA.
    let without_cert = PeerChannels::default();
    let rogue_cert = PeerChannels::new(Some(
        Reloading::client(CertFiles {
            ca: Some(dir.join("ca.pem")),
            ..node_files(&rogue, "n1", false)
        })
        .unwrap(),
    ));
    for (what, channels) in [("no certificate", without_cert), ("another CA", rogue_cert)] {
        let caller = PeerClient::new(
            leader,
            IdentityCell::new(Some(Identity {
                cluster_id,
                node_id: leader,
            })),
            64 << 20,
            channels,
        );
        let rpc =
            openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(term + 100, leader), None);
        let req = caller.request(
            pb::RaftRequest {
                group: KV.to_string(),
                payload: codec::encode(&rpc),
            },
            Some(Duration::from_secs(3)),
        );
        let res = caller.raft(&addr, Lane::Control).unwrap().vote(req).await;
        assert!(
            res.is_err(),
            "{what}: the vote request reached the node: {res:?}"
        );
        // Hello is what a joining node says first, and the one call a node answers
        // without a cluster identity check: over an open transport it succeeds.
        let hello = caller
            .hello(&addr, "127.0.0.1:1", Duration::from_secs(3))
            .await;
        assert!(
            hello.is_err(),
            "{what}: a joining impostor was answered: {hello:?}"
        );
    }
    // The same Hello with the cluster's own certificate is answered.
    let member = PeerClient::new(
        leader,
        IdentityCell::new(Some(Identity {
            cluster_id,
            node_id: leader,
        })),
        64 << 20,
        PeerChannels::new(Some(
            Reloading::client(node_files(&dir, &format!("n{leader}"), true)).unwrap(),
        )),
    );
    member
        .hello(&addr, "127.0.0.1:1", Duration::from_secs(3))
        .await
        .expect("a member's Hello is answered");
    assert!(
        c.metrics(follower, KV).current_term < term + 100,
        "the refused vote requests changed nothing"
    );
    put(c.node(leader), KV, "k2", "v2")
        .await
        .expect("the cluster still works");
    c.shutdown().await;
}

#[test]
fn a_plaintext_cluster_needs_insecure_peer() {
    let mut cfg = test_config(1, PathBuf::from("unused"));
    cfg.insecure_peer = false;
    cfg.initial_members = [(1, "a:1".to_string()), (2, "b:1".to_string())].into();
    cfg.advertise_peer = "a:1".into();
    let err = cfg.validate().expect_err("plaintext cluster refused");
    assert!(err.to_string().contains("--insecure-peer"), "{err}");
    assert!(err.to_string().contains("peer-ca"), "{err}");
    cfg.insecure_peer = true;
    cfg.validate().expect("allowed with --insecure-peer");
    cfg.insecure_peer = false;
    cfg.peer_tls = Some(node_files(Path::new("/certs"), "n1", true));
    cfg.validate().expect("allowed with mutual TLS");
    // A node that joins is part of a cluster too.
    let mut joining = test_config(4, PathBuf::from("unused"));
    joining.insecure_peer = false;
    joining.join = Some("a:1".into());
    assert!(joining.validate().is_err());
}

// ---- authentication and authorization ------------------------------------------

use nacosd::pb::auth_service_client::AuthServiceClient;
use nacosd::pb::cluster_service_client::ClusterServiceClient;
use nacosd::pb::config_service_client::ConfigServiceClient;
use nacosd::pb::db_service_client::DbServiceClient;
use nacosd::pb::naming_service_client::NamingServiceClient;
use tonic::transport::Channel;
use tonic::Code;

const ADMIN_PASSWORD: &str = "first-admin-secret";

fn with_auth(cfg: &mut Config) {
    cfg.auth.enabled = true;
    cfg.auth.initial_admin_password = Some(ADMIN_PASSWORD.into());
}

async fn channel(c: &TestCluster, id: u64) -> Channel {
    Endpoint::from_shared(format!("http://{}", c.server(id).client_addr))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

async fn login(ch: &Channel, user: &str, password: &str) -> Result<String, tonic::Status> {
    AuthServiceClient::new(ch.clone())
        .login(pb::LoginRequest {
            username: user.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().token)
}

/// The admin's token, once the bootstrap (signing key, first admin) is applied.
async fn admin_token(ch: &Channel) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match login(ch, "admin", ADMIN_PASSWORD).await {
            Ok(t) => return t,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "admin login not possible yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the first admin never could log in: {e:?}"),
        }
    }
}

fn publish(ns: &str, data_id: &str) -> pb::PublishConfigRequest {
    pb::PublishConfigRequest {
        key: Some(pb::ConfigKey {
            namespace: ns.into(),
            group: "DEFAULT_GROUP".into(),
            data_id: data_id.into(),
        }),
        content: "x=1".into(),
        ..Default::default()
    }
}

fn get(ns: &str, data_id: &str) -> pb::GetConfigRequest {
    pb::GetConfigRequest {
        key: Some(pb::ConfigKey {
            namespace: ns.into(),
            group: "DEFAULT_GROUP".into(),
            data_id: data_id.into(),
        }),
        ..Default::default()
    }
}

fn role(name: &str, perms: &[(&str, pb::ResourceKind, pb::Access)]) -> pb::PutRoleRequest {
    pb::PutRoleRequest {
        role: Some(pb::AuthRole {
            name: name.into(),
            permissions: perms
                .iter()
                .map(|(ns, kind, access)| pb::Permission {
                    namespace: ns.to_string(),
                    kind: *kind as i32,
                    access: *access as i32,
                })
                .collect(),
        }),
    }
}

async fn create_user(ch: &Channel, admin: &str, user: &str, password: &str, roles: &[&str]) {
    AuthServiceClient::new(ch.clone())
        .create_user(authed(
            pb::CreateUserRequest {
                username: user.into(),
                password: password.into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
            },
            admin,
        ))
        .await
        .expect("admin creates a user");
}

/// Role `dev-config-writer` (write config in namespace `dev`) and user `alice`
/// (password `alice-password`) holding it.
async fn create_alice(ch: &Channel, admin: &str) {
    use pb::{Access as A, ResourceKind as K};
    AuthServiceClient::new(ch.clone())
        .put_role(authed(
            role("dev-config-writer", &[("dev", K::Config, A::Write)]),
            admin,
        ))
        .await
        .expect("put role");
    create_user(ch, admin, "alice", "alice-password", &["dev-config-writer"]).await;
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("the call must fail");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_refuses_calls_without_a_valid_token() {
    let c = TestCluster::start(1, with_kv, with_auth).await;
    let ch = channel(&c, 1).await;
    let admin = admin_token(&ch).await;
    let mut config = ConfigServiceClient::new(ch.clone());

    let (code_, msg) = code(config.publish_config(publish("public", "a")).await);
    assert_eq!(code_, Code::Unauthenticated);
    assert!(msg.contains("authorization: Bearer"), "{msg}");
    let (code_, msg) = code(
        config
            .publish_config(authed(publish("public", "a"), "nacosd1.e30.AAAA"))
            .await,
    );
    assert_eq!(code_, Code::Unauthenticated);
    assert!(msg.contains("not valid"), "{msg}");
    let mut bad = tonic::Request::new(publish("public", "a"));
    bad.metadata_mut()
        .insert("authorization", "Basic YWRtaW46eA==".parse().unwrap());
    assert_eq!(
        code(config.publish_config(bad).await).0,
        Code::Unauthenticated
    );

    // A wrong password and an unknown user get the same answer.
    let (code_, wrong_password) = code(login(&ch, "admin", "not-the-password").await);
    assert_eq!(code_, Code::Unauthenticated);
    let (code_, unknown_user) = code(login(&ch, "nobody", "not-the-password").await);
    assert_eq!(code_, Code::Unauthenticated);
    assert_eq!(wrong_password, unknown_user);

    config
        .publish_config(authed(publish("public", "a"), &admin))
        .await
        .expect("the admin may publish");
    // Health stays open for probes.
    tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no token");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_grant_access_per_namespace_and_kind() {
    let c = TestCluster::start(1, with_kv, with_auth).await;
    let ch = channel(&c, 1).await;
    let admin = admin_token(&ch).await;
    let mut auth = AuthServiceClient::new(ch.clone());
    use pb::{Access as A, ResourceKind as K};
    create_alice(&ch, &admin).await;
    auth.put_role(authed(
        role("prod-reader", &[("prod", K::Any, A::Read)]),
        &admin,
    ))
    .await
    .expect("put role");
    create_user(&ch, &admin, "bob", "bob-password", &["prod-reader"]).await;
    let alice = login(&ch, "alice", "alice-password").await.unwrap();
    let bob = login(&ch, "bob", "bob-password").await.unwrap();
    let mut config = ConfigServiceClient::new(ch.clone());
    let mut naming = NamingServiceClient::new(ch.clone());
    let mut db = DbServiceClient::new(ch.clone());
    let mut cluster = ClusterServiceClient::new(ch.clone());

    config
        .publish_config(authed(publish("dev", "app"), &alice))
        .await
        .expect("alice writes config in dev");
    config
        .get_config(authed(get("dev", "app"), &alice))
        .await
        .expect("write includes read");
    config
        .publish_config(authed(publish("prod", "app"), &admin))
        .await
        .unwrap();
    let (code_, msg) = code(
        config
            .publish_config(authed(publish("prod", "app"), &alice))
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied);
    assert!(
        msg.contains("alice") && msg.contains("write config") && msg.contains("prod"),
        "{msg}"
    );
    let register = pb::RegisterInstanceRequest {
        service: Some(pb::ServiceKey {
            namespace: "dev".into(),
            group: "DEFAULT_GROUP".into(),
            service_name: "svc".into(),
        }),
        instance: Some(pb::Instance {
            ip: "10.0.0.1".into(),
            port: 8080,
            ..Default::default()
        }),
    };
    let (code_, msg) = code(
        naming
            .register_instance(authed(register.clone(), &alice))
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied, "another kind: {msg}");
    let query = pb::QueryRequest {
        statements: vec![pb::Statement {
            sql: "SELECT 1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        code(db.query(authed(query.clone(), &alice)).await).0,
        Code::PermissionDenied
    );

    // bob reads every kind in prod, writes nothing.
    config
        .get_config(authed(get("prod", "app"), &bob))
        .await
        .expect("bob reads prod");
    assert_eq!(
        code(config.get_config(authed(get("dev", "app"), &bob)).await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            config
                .publish_config(authed(publish("prod", "app"), &bob))
                .await
        )
        .0,
        Code::PermissionDenied
    );

    // Admin-only operations.
    let (code_, msg) = code(
        cluster
            .snapshot(authed(pb::SnapshotRequest::default(), &alice))
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied);
    assert!(msg.contains("admin role"), "{msg}");
    assert_eq!(
        code(auth.list_users(authed(pb::ListUsersRequest {}, &bob)).await).0,
        Code::PermissionDenied
    );
    cluster
        .status(authed(pb::StatusRequest::default(), &bob))
        .await
        .expect("any user may look at the status");
    naming
        .register_instance(authed(register, &admin))
        .await
        .expect("the admin may do anything");
    db.query(authed(query, &admin)).await.expect("admin db");

    // Bad input is INVALID_ARGUMENT with a clear message.
    let (code_, msg) = code(
        auth.create_user(authed(
            pb::CreateUserRequest {
                username: "carol".into(),
                password: "short".into(),
                roles: vec![],
            },
            &admin,
        ))
        .await,
    );
    assert_eq!(code_, Code::InvalidArgument);
    assert!(msg.contains("password"), "{msg}");
    let (code_, msg) = code(
        auth.create_user(authed(
            pb::CreateUserRequest {
                username: "carol".into(),
                password: "carol-password".into(),
                roles: vec!["no-such-role".into()],
            },
            &admin,
        ))
        .await,
    );
    assert_eq!(code_, Code::InvalidArgument);
    assert!(msg.contains("no-such-role"), "{msg}");
    assert_eq!(
        code(auth.put_role(authed(role("admin", &[]), &admin)).await).0,
        Code::InvalidArgument
    );

    // A new password invalidates the tokens issued before it; so does deletion.
    auth.change_password(authed(
        pb::ChangePasswordRequest {
            username: "alice".into(),
            new_password: "alice-password-2".into(),
        },
        &alice,
    ))
    .await
    .expect("alice changes her own password");
    let (code_, msg) = code(config.get_config(authed(get("dev", "app"), &alice)).await);
    assert_eq!(code_, Code::Unauthenticated);
    assert!(msg.contains("log in again"), "{msg}");
    assert_eq!(
        code(login(&ch, "alice", "alice-password").await).0,
        Code::Unauthenticated
    );
    let alice = login(&ch, "alice", "alice-password-2").await.unwrap();
    config
        .get_config(authed(get("dev", "app"), &alice))
        .await
        .expect("a fresh token works");
    assert_eq!(
        code(
            auth.change_password(authed(
                pb::ChangePasswordRequest {
                    username: "bob".into(),
                    new_password: "hijacked-password".into(),
                },
                &alice,
            ))
            .await
        )
        .0,
        Code::PermissionDenied
    );
    auth.delete_user(authed(
        pb::DeleteUserRequest {
            username: "alice".into(),
        },
        &admin,
    ))
    .await
    .unwrap();
    assert_eq!(
        code(config.get_config(authed(get("dev", "app"), &alice)).await).0,
        Code::Unauthenticated
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_expire() {
    let c = TestCluster::start(1, with_kv, |cfg| {
        with_auth(cfg);
        cfg.auth.token_ttl = Duration::from_secs(2);
    })
    .await;
    let ch = channel(&c, 1).await;
    let admin = admin_token(&ch).await;
    let mut cluster = ClusterServiceClient::new(ch.clone());
    cluster
        .status(authed(pb::StatusRequest::default(), &admin))
        .await
        .expect("a fresh token works");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match cluster
            .status(authed(pb::StatusRequest::default(), &admin))
            .await
        {
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the token never expired"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::Unauthenticated);
                assert!(s.message().contains("expired"), "{}", s.message());
                break;
            }
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_are_replicated_to_every_node() {
    let c = TestCluster::start(3, with_kv, with_auth).await;
    let ch1 = channel(&c, 1).await;
    let ch3 = channel(&c, 3).await;
    let admin = admin_token(&ch1).await;
    create_user(&ch1, &admin, "dave", "dave-password", &[]).await;
    // Created through node 1, logged in through node 3 (login reads linearizably).
    let dave = login(&ch3, "dave", "dave-password")
        .await
        .expect("the user is known on another node");
    // The token is signed with the cluster's one key: node 2 accepts it.
    let ch2 = channel(&c, 2).await;
    let who = AuthServiceClient::new(ch2)
        .who_am_i(authed(pb::WhoAmIRequest {}, &dave))
        .await
        .expect("a token from node 3 is valid on node 2")
        .into_inner();
    assert_eq!(who.username, "dave");
    c.shutdown().await;
}

// ---- client certificates and login limits -----------------------------------------

/// Client certificates from `deploy/gen-dev-certs.sh --client`: a client CA of their
/// own in `dir`, and `USER.pem` / `USER-key.pem` naming each user by its CN.
fn gen_client_certs(dir: &Path, users: &[&str]) {
    let mut args = vec!["--client", dir.to_str().unwrap()];
    args.extend_from_slice(users);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gen-dev-certs.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(&args)
        .output()
        .expect("run deploy/gen-dev-certs.sh --client");
    assert!(
        out.status.success(),
        "gen-dev-certs.sh --client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS endpoint that trusts `ca` and presents `dir/name.pem` as its certificate.
fn tls_endpoint_as(addr: SocketAddr, ca: &Path, dir: &Path, name: &str) -> Endpoint {
    let cert = std::fs::read(dir.join(format!("{name}.pem"))).unwrap();
    let key = std::fs::read(dir.join(format!("{name}-key.pem"))).unwrap();
    let ca = std::fs::read(ca).unwrap();
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(tonic::transport::Identity::from_pem(cert, key))
                .domain_name("localhost"),
        )
        .unwrap()
}

/// Who the server takes the caller of a connection made with `endpoint` for, with
/// no token: `Ok(user)`, or the failure (of the connection or of the call).
async fn who_am_i(endpoint: Endpoint, token: Option<&str>) -> Result<String, String> {
    let ch = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let req = match token {
        Some(t) => authed(pb::WhoAmIRequest {}, t),
        None => tonic::Request::new(pb::WhoAmIRequest {}),
    };
    AuthServiceClient::new(ch)
        .who_am_i(req)
        .await
        .map(|r| r.into_inner().username)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_certificates_log_in_as_the_user_their_common_name_names() {
    let td = tempfile::tempdir().unwrap();
    let nodes = td.path().join("nodes");
    let clients = td.path().join("clients");
    gen_certs(&nodes, &["n1"]);
    gen_client_certs(&clients, &["alice", "mallory"]);
    let server_ca = nodes.join("ca.pem");
    let c = TestCluster::start(1, with_kv, |cfg| {
        with_auth(cfg);
        cfg.client_tls = Some(CertFiles {
            ca: Some(clients.join("ca.pem")),
            ..node_files(&nodes, "n1", false)
        });
        cfg.peer_tls = Some(node_files(&nodes, "n1", true));
    })
    .await;
    let addr = c.server(1).client_addr;

    // A client without a certificate is served, and logs in with a password.
    let ch = tls_endpoint(addr, &server_ca).connect().await.unwrap();
    let admin = admin_token(&ch).await;
    create_alice(&ch, &admin).await;
    // A user named like the node: the node's certificate must still not log in.
    create_user(&ch, &admin, "n1", "n1-password", &["admin"]).await;

    // Alice's certificate is alice, with alice's roles and no token.
    let alice = tls_endpoint_as(addr, &server_ca, &clients, "alice");
    assert_eq!(who_am_i(alice.clone(), None).await, Ok("alice".to_string()));
    let alice_ch = alice.connect().await.unwrap();
    let mut config = ConfigServiceClient::new(alice_ch.clone());
    config
        .publish_config(publish("dev", "app"))
        .await
        .expect("alice's certificate may write config in dev");
    let (code_, msg) = code(config.publish_config(publish("prod", "app")).await);
    assert_eq!(code_, Code::PermissionDenied);
    assert!(msg.contains("alice") && msg.contains("prod"), "{msg}");
    let who = AuthServiceClient::new(alice_ch.clone())
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.roles, vec!["dev-config-writer".to_string()]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        who.expires_at_ms > now_ms + 300 * 24 * 3600 * 1000,
        "a certificate login lasts as long as the certificate: {}",
        who.expires_at_ms
    );
    // A token on the same connection wins over the certificate.
    assert_eq!(
        who_am_i(alice.clone(), Some(&admin)).await,
        Ok("admin".to_string())
    );
    config
        .publish_config(authed(publish("prod", "app"), &admin))
        .await
        .expect("with the admin's token");

    // A certificate from the client CA for a user that does not exist.
    let err = who_am_i(tls_endpoint_as(addr, &server_ca, &clients, "mallory"), None)
        .await
        .unwrap_err();
    assert!(
        err.starts_with("Unauthenticated")
            && err.contains("\"mallory\"")
            && err.contains("does not exist"),
        "{err}"
    );

    // A node certificate (signed by the peer CA) is no client login, even though a
    // user "n1" exists: the handshake or the call fails, and never as n1.
    let node_cert = who_am_i(tls_endpoint_as(addr, &server_ca, &nodes, "n1"), None).await;
    assert!(
        node_cert
            .as_ref()
            .is_err_and(|e| !e.starts_with("Unauthenticated")),
        "a peer certificate must not reach the client services: {node_cert:?}"
    );

    // Deleting the user shuts its certificate out.
    AuthServiceClient::new(ch.clone())
        .delete_user(authed(
            pb::DeleteUserRequest {
                username: "alice".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let err = who_am_i(alice, None).await.unwrap_err();
    assert!(err.starts_with("Unauthenticated"), "{err}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_are_limited_per_user_and_per_address() {
    let c = TestCluster::start(1, with_kv, |cfg| {
        with_auth(cfg);
        cfg.auth.login_limits = nacosd::config::LoginLimits {
            per_user: 3,
            per_address: 6,
        };
    })
    .await;
    let ch = channel(&c, 1).await;
    let admin = admin_token(&ch).await;
    create_user(&ch, &admin, "carol", "carol-password", &[]).await;

    // Three wrong passwords for the admin spend the user's budget: the fourth login
    // is refused unchecked, the right password included.
    for _ in 0..3 {
        assert_eq!(
            code(login(&ch, "admin", "guess").await).0,
            Code::Unauthenticated
        );
    }
    let (code_, msg) = code(login(&ch, "admin", ADMIN_PASSWORD).await);
    assert_eq!(code_, Code::ResourceExhausted);
    assert!(
        msg.contains("for this user name") && msg.contains("try again in"),
        "{msg}"
    );
    // Other users log in; successful logins cost nothing.
    for _ in 0..5 {
        login(&ch, "carol", "carol-password")
            .await
            .expect("another user is not limited");
    }
    // The admin's token still works while its password logins are refused.
    ClusterServiceClient::new(ch.clone())
        .status(authed(pb::StatusRequest::default(), &admin))
        .await
        .expect("tokens are not limited");

    // Three more failures, for names that do not exist, spend this address's budget
    // of six: now every user is refused from here.
    for user in ["x1", "x2", "x3"] {
        assert_eq!(
            code(login(&ch, user, "guess").await).0,
            Code::Unauthenticated
        );
    }
    let (code_, msg) = code(login(&ch, "carol", "carol-password").await);
    assert_eq!(code_, Code::ResourceExhausted);
    assert!(msg.contains("from this address"), "{msg}");

    let metrics = nacosd::http::render_metrics(c.node(1));
    for limit in ["user", "address"] {
        let series = format!("nacosd_login_refused_total{{limit=\"{limit}\"}} 1");
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} missing from:\n{metrics}"
        );
    }
    c.shutdown().await;
}

// ---- nacosctl against a real process with TLS and auth ----------------------------

struct Ctl {
    ca: PathBuf,
    home: PathBuf,
    endpoint: String,
}

impl Ctl {
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nacosctl"))
            .arg("--endpoint")
            .arg(&self.endpoint)
            .arg("--ca")
            .arg(&self.ca)
            .args(args)
            .env("XDG_CONFIG_HOME", &self.home)
            .env_remove("NACOSCTL_TOKEN")
            .env_remove("NACOSCTL_USER")
            .env_remove("NACOSCTL_PASSWORD")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run nacosctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let (ok, text) = self.run(args, env);
        assert!(ok, "nacosctl {args:?} failed: {text}");
        text
    }

    fn fails(&self, args: &[&str], env: &[(&str, &str)], want: &str) {
        let (ok, text) = self.run(args, env);
        assert!(
            !ok && text.contains(want),
            "nacosctl {args:?}: expected {want}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacosctl_logs_in_and_manages_users_over_tls() {
    use crate::common::process::Proc;
    let (td, dir) = certs_dir();
    let clients = td.path().join("clients");
    gen_client_certs(&clients, &["alice"]);
    let password_file = td.path().join("admin-password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let mut node = Proc::new(1, td.path());
    node.extra_args = [
        "--tls-cert",
        dir.join("n1.pem").to_str().unwrap(),
        "--tls-key",
        dir.join("n1-key.pem").to_str().unwrap(),
        "--client-ca",
        clients.join("ca.pem").to_str().unwrap(),
        "--auth",
        "--initial-admin-password-file",
        password_file.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    node.start();
    let ctl = Ctl {
        ca: dir.join("ca.pem"),
        home: td.path().join("home"),
        endpoint: node.client.clone(),
    };
    let admin_env = [("NACOSCTL_PASSWORD", ADMIN_PASSWORD)];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, text) = ctl.run(&["login", "--user", "admin"], &admin_env);
        if ok {
            assert!(text.contains("logged in as admin"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "admin login: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The cached token serves the next commands.
    ctl.ok(&["cluster", "status"], &[]);
    ctl.ok(
        &["role", "put", "dev-writer", "--grant", "dev:config:write"],
        &[],
    );
    ctl.ok(
        &["user", "add", "alice", "--role", "dev-writer"],
        &[("NACOSCTL_NEW_PASSWORD", "alice-password")],
    );
    let users = ctl.ok(&["user", "list", "-o", "json"], &[]);
    assert!(
        users.contains("alice") && users.contains("dev-writer"),
        "{users}"
    );
    let roles = ctl.ok(&["role", "list"], &[]);
    assert!(roles.contains("dev:config:write"), "{roles}");
    ctl.fails(
        &["role", "put", "x", "--grant", "dev:cfg:read"],
        &[],
        "kind",
    );

    // alice with --user/--password is not an admin.
    ctl.fails(
        &["--user", "alice", "snapshot"],
        &[("NACOSCTL_PASSWORD", "alice-password")],
        "PermissionDenied",
    );
    ctl.fails(
        &["--token", "forged", "cluster", "status"],
        &[],
        "nauthenticated",
    );
    // alice's client certificate: alice, with no token (the admin's cached token is
    // not sent), so any valid user's calls work and admin ones are refused.
    let alice_cert = clients.join("alice.pem");
    let alice_key = clients.join("alice-key.pem");
    let as_alice = [
        "--cert",
        alice_cert.to_str().unwrap(),
        "--key",
        alice_key.to_str().unwrap(),
    ];
    ctl.ok(&[&as_alice[..], &["cluster", "status"]].concat(), &[]);
    ctl.fails(
        &[&as_alice[..], &["user", "list"]].concat(),
        &[],
        "user \"alice\"",
    );
    ctl.ok(&["logout"], &[]);
    ctl.fails(&["cluster", "status"], &[], "nauthenticated");
    // Plaintext against the TLS port fails.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nacosctl"))
        .args([
            "--endpoint",
            &node.client,
            "--timeout-ms",
            "2000",
            "cluster",
            "status",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    node.kill9();
}

/// `GET path` over TLS (trusting `ca`) with an optional bearer token: status line and
/// body.
async fn https_get(addr: SocketAddr, ca: &Path, path: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the HTTP port");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_port_serves_tls_and_metrics_can_need_a_token() {
    let (_td, dir) = certs_dir();
    let c = TestCluster::start(1, with_kv, |cfg| {
        cfg.client_tls = Some(node_files(&dir, "n1", false));
        cfg.http_tls = true;
        cfg.metrics_token = Some("scrape-token".into());
    })
    .await;
    let addr = c.server(1).http_addr;
    let ca = dir.join("ca.pem");
    let health = https_get(addr, &ca, "/healthz", None).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let denied = https_get(addr, &ca, "/metrics", None).await;
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let wrong = https_get(addr, &ca, "/metrics", Some("guess")).await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let metrics = https_get(addr, &ca, "/metrics", Some("scrape-token")).await;
    assert!(
        metrics.starts_with("HTTP/1.1 200") && metrics.contains("nacosd_raft_term"),
        "{metrics}"
    );
    // Plain HTTP gets no answer from a TLS port.
    let plain = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).to_string()
    };
    assert!(!plain.contains("200 OK"), "{plain}");
    c.shutdown().await;
}
