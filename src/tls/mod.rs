//! TLS for the three ports, with certificates reloaded from disk while the node runs.
//!
//! - `files`: a certificate, key and CA as files, turned into rustls configurations;
//!   [`Reloading`] rebuilds a configuration when a file changes on disk.
//! - `accept`: the server side. Accepted TCP connections go through a TLS handshake
//!   (concurrently, with a deadline) before tonic or axum sees them; a failed handshake
//!   is logged with its reason and never reaches a service.
//! - `connect`: the calling side of the peer port: every new connection to a peer
//!   presents this node's certificate and checks the peer's against the cluster CA.
//!
//! Rotation (cert-manager rewrites the files of a mounted secret): each new connection
//! asks [`Reloading::current`], which compares the files' size, modification time and
//! inode with those it last loaded and rebuilds the configuration when they differ.
//! Connections already open keep the certificate they were made with; a half-written
//! set of files (a key that does not match the certificate yet) is logged and the
//! previous configuration stays in use, so a rotation never takes a port down.
//!
//! - `client_cert`: what a client certificate says (its subject's common name), kept
//!   per connection and handed to every request in [`crate::conns::ConnInfo`].
//!
//! Two trust roots, never mixed: the peer port requires a client certificate signed
//! by the cluster CA (`--peer-ca`, mutual TLS) and trusts any such certificate as a
//! member; the client port, given a client CA (`--client-ca`), lets a client present
//! a certificate signed by *that* CA, which `auth` takes as a login as the user its
//! common name names. A node certificate is therefore no client login unless the
//! operator makes the two CAs the same (the node warns when they share a certificate).
//!
//! What this module does not do: it does not decide who may do what (`auth` does).

mod accept;
mod client_cert;
mod connect;
mod files;

pub use accept::{tls_incoming, ServerConn};
pub use client_cert::ClientCert;
pub use connect::connector;
pub use files::{CertFiles, Reloading};
