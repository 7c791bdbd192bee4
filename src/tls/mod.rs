//! TLS, in one place: [`certs`] makes CAs and certificates (rcgen) and edits caBundles;
//! [`server`] is the rustls side (a resolver whose certificate can be swapped under open
//! connections, client-certificate roots for the extender's mTLS, the file reloader); [`source`]
//! turns `serve`'s TLS settings into a running server configuration. The Kubernetes-backed
//! self-managed mode (`crate::cluster::certs`) builds on these, never the other way round.

pub mod certs;
pub mod server;
pub mod source;

pub use server::{CertResolver, ClientRoots, VerifiedClient};
pub use source::{CaBundleSettings, Tls, TlsSource};
