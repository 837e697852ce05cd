//! The TLS certificate every TLS listener serves, reloadable: the listeners ask
//! [`Certificates`] (a rustls certificate resolver) for the certificate at each handshake, and
//! a reload swaps a new one in atomically. New handshakes get the new certificate;
//! established connections keep theirs. A certificate that cannot be loaded (missing or
//! unreadable file, no certificate, no key, a key that does not match the certificate) is
//! refused and the old one keeps serving.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::ConfigMetrics;

/// The config key of the certificate file.
pub const CERT_KEY: &str = "server.tls_cert";
/// The config key of the private key file.
pub const KEY_KEY: &str = "server.tls_key";

/// Why a certificate and key could not be loaded; names the config key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct CertError {
    /// [`CERT_KEY`] or [`KEY_KEY`].
    pub key: &'static str,
    pub why: String,
}

fn problem(key: &'static str, why: impl Into<String>) -> CertError {
    CertError {
        key,
        why: why.into(),
    }
}

/// A certificate chain and its private key, read from their files and checked.
#[derive(Clone)]
pub struct Loaded {
    certified: Arc<CertifiedKey>,
    /// The leaf certificate's notAfter, unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("certificates", &self.certified.cert.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// Reads the PEM certificate chain at `cert` (leaf first) and the PEM private key at
    /// `key` (PKCS#8, PKCS#1 or SEC1), and checks the key belongs to the leaf certificate.
    /// Blocks (file reads): call it at startup or on the reload thread.
    pub fn read(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let cert_pem = std::fs::read(cert)
            .map_err(|e| problem(CERT_KEY, format!("cannot read {}: {e}", cert.display())))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                problem(
                    CERT_KEY,
                    format!("{} is not a PEM certificate chain: {e}", cert.display()),
                )
            })?;
        let Some(leaf) = chain.first() else {
            return Err(problem(
                CERT_KEY,
                format!("{} holds no PEM certificate", cert.display()),
            ));
        };
        let not_after = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
            Ok((_, parsed)) => parsed.validity().not_after.timestamp(),
            Err(e) => {
                return Err(problem(
                    CERT_KEY,
                    format!(
                        "{}: the first certificate does not parse: {e}",
                        cert.display()
                    ),
                ))
            }
        };
        let key_pem = std::fs::read(key)
            .map_err(|e| problem(KEY_KEY, format!("cannot read {}: {e}", key.display())))?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            problem(
                KEY_KEY,
                format!("{} holds no usable PEM private key: {e}", key.display()),
            )
        })?;
        pingora::tls::install_default_crypto_provider();
        let provider = CryptoProvider::get_default()
            .ok_or_else(|| problem(KEY_KEY, "no TLS crypto provider is installed"))?;
        let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| {
            problem(
                KEY_KEY,
                format!(
                    "{} does not go with the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
        // `from_der` lets a key whose public half it cannot tell through; refuse it too.
        certified.keys_match().map_err(|e| {
            problem(
                KEY_KEY,
                format!(
                    "{} does not match the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
        Ok(Self {
            certified: Arc::new(certified),
            not_after,
        })
    }
}

/// The certificate the TLS listeners serve now. One for every TLS listener; cheap to read
/// at each handshake (one atomic load, no lock).
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    metrics: ConfigMetrics,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

impl Certificates {
    /// Serves `loaded`; its expiry goes to `gatehouse_tls_certificate_expiry_timestamp_seconds`.
    pub fn new(loaded: Loaded, metrics: ConfigMetrics) -> Self {
        metrics.tls_certificate_expires(loaded.not_after);
        Self {
            current: ArcSwap::new(loaded.certified),
            metrics,
        }
    }

    /// Serves `loaded` from the next handshake on; connections already established keep the
    /// certificate they were given.
    pub fn replace(&self, loaded: Loaded) {
        self.metrics.tls_certificate_expires(loaded.not_after);
        self.current.store(loaded.certified);
    }

    /// Whether `loaded` is the certificate chain served now (same certificates).
    pub fn serves(&self, loaded: &Loaded) -> bool {
        self.current.load().cert == loaded.certified.cert
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        dir: tempfile::TempDir,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    }

    fn pair(name: &str) -> Pair {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Pair { dir, cert, key }
    }

    /// A certificate and its own key load, with the leaf's notAfter.
    #[test]
    fn a_certificate_with_its_own_key_loads() {
        let p = pair("a.test");
        let loaded = Loaded::read(&p.cert, &p.key).unwrap();
        // rcgen's default validity ends in 4096.
        assert!(loaded.not_after > 4_000_000_000, "{loaded:?}");
    }

    /// Every way a file can be wrong is refused and names the config key of the file at
    /// fault: a missing or empty certificate file, garbage in either file, a missing key
    /// file, and a key that belongs to another certificate.
    #[test]
    fn every_bad_file_is_refused_naming_its_key() {
        let a = pair("a.test");
        let b = pair("b.test");
        let junk = a.dir.path().join("junk");
        std::fs::write(&junk, "not PEM at all\n").unwrap();
        let empty = a.dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        let missing = a.dir.path().join("missing");
        let truncated = a.dir.path().join("truncated");
        let text = std::fs::read_to_string(&a.key).unwrap();
        std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
        let cases = [
            (&missing, &a.key, CERT_KEY),
            (&empty, &a.key, CERT_KEY),
            (&junk, &a.key, CERT_KEY),
            (&a.key, &a.key, CERT_KEY),
            (&a.cert, &missing, KEY_KEY),
            (&a.cert, &empty, KEY_KEY),
            (&a.cert, &junk, KEY_KEY),
            (&a.cert, &truncated, KEY_KEY),
            (&a.cert, &a.cert, KEY_KEY),
            (&a.cert, &b.key, KEY_KEY),
            (&b.cert, &a.key, KEY_KEY),
        ];
        for (cert, key, at) in cases {
            let err = Loaded::read(cert, key).unwrap_err();
            assert_eq!(err.key, at, "{cert:?} {key:?}: {err}");
            assert!(err.to_string().starts_with(at), "{err}");
        }
    }

    /// The resolver hands out the certificate swapped in last; `serves` tells which.
    #[test]
    fn a_replaced_certificate_is_served_from_then_on() {
        let (pa, pb) = (pair("a.test"), pair("b.test"));
        let a = Loaded::read(&pa.cert, &pa.key).unwrap();
        let b = Loaded::read(&pb.cert, &pb.key).unwrap();
        let certs = Certificates::new(a.clone(), crate::metrics::Metrics::new().unwrap().config);
        assert!(certs.serves(&a) && !certs.serves(&b));
        certs.replace(b.clone());
        assert!(certs.serves(&b) && !certs.serves(&a));
    }
}
