//! The identity assertion: a short-lived JWT that Gatehouse signs with its own key and sends to
//! the app in `X-Gatehouse-Identity`, so the app can check who the user is without trusting the
//! network between them. The public half is served as a JWKS document at
//! `/.well-known/gatehouse/jwks.json`.
//!
//! This module holds the key and the signing. Which claims go into the token, and for how long
//! it is valid, is the caller's business: [`AssertionSigner::sign`] takes any `Serialize` value.
//!
//! Keys are PKCS#8 PEM files. Without a configured `key_file`, Gatehouse makes one in its data
//! directory on first start (`identity-signing-es256.pem` or `identity-signing-eddsa.pem`, mode
//! 0600) and reads it back on every later start, so the key id stays the same across restarts.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use crate::config::model::{SigningAlg, UnknownSigningAlg};

impl SigningAlg {
    /// The lower-case word used in the default key file name.
    pub fn file_word(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "es256",
            SigningAlg::EdDsa => "eddsa",
        }
    }

    fn jwt_algorithm(self) -> Algorithm {
        match self {
            SigningAlg::Es256 => Algorithm::ES256,
            SigningAlg::EdDsa => Algorithm::EdDSA,
        }
    }

    /// What a key file for this algorithm must hold, for error messages.
    fn key_kind(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "a PKCS#8 PEM P-256 private key",
            SigningAlg::EdDsa => "a PKCS#8 PEM Ed25519 private key",
        }
    }
}

/// Why the signer could not be set up, or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("cannot read the identity signing key {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The text is not a key of the kind the algorithm needs. `origin` names the file, or says
    /// that the PEM was given directly.
    #[error("{origin} is not {expected} ({reason})")]
    InvalidKey {
        origin: String,
        expected: &'static str,
        reason: String,
    },
    #[error("cannot write the identity signing key {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot encode a freshly generated identity signing key: {0}")]
    Encode(String),
    #[error("cannot sign the identity assertion: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The key file is open to group or others.
    #[error("the identity signing key {0}")]
    Exposed(String),
}

/// Signs identity assertions with one private key, and serves the matching public key.
pub struct AssertionSigner {
    alg: SigningAlg,
    key: EncodingKey,
    /// alg, kid and typ, built once.
    header: Header,
    kid: String,
    jwks: String,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Where a PEM came from, for error messages, when it is not a file.
const GIVEN_PEM: &str = "the given PEM text";

/// How long `load_or_create` waits for another process that has just created the key file to
/// finish writing it.
const EMPTY_FILE_RETRIES: u32 = 20;
const EMPTY_FILE_PAUSE: Duration = Duration::from_millis(50);

impl AssertionSigner {
    /// A fresh random key (tests, benches).
    pub fn generate(alg: SigningAlg) -> Result<Self, AssertionError> {
        let pem = fresh_pem(alg)?;
        Self::parse(alg, &pem, GIVEN_PEM)
    }

    /// A PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`) of the algorithm's kind.
    pub fn from_pem(alg: SigningAlg, pem: &str) -> Result<Self, AssertionError> {
        Self::parse(alg, pem, GIVEN_PEM)
    }

    /// `key_file` when given (it must exist); else `<data_dir>/identity-signing-<es256|eddsa>.pem`,
    /// created with a fresh key on first start (mode 0600, never overwriting a file another
    /// process made first) and read back after.
    pub fn load_or_create(
        alg: SigningAlg,
        key_file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<Self, AssertionError> {
        if let Some(path) = key_file {
            let pem = read_key_file(path)?;
            return Self::parse(alg, &pem, &path.display().to_string());
        }
        let path = default_key_path(alg, data_dir);
        let pem = match create_key_file(alg, &path)? {
            Some(pem) => pem,
            None => read_existing_default(&path)?,
        };
        Self::parse(alg, &pem, &path.display().to_string())
    }

    /// The signature algorithm.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// The key id: the RFC 7638 JWK thumbprint (base64url SHA-256 of the canonical JWK members).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS document for the public key, as served at `/.well-known/gatehouse/jwks.json`:
    /// `{"keys":[{"kty":..,"crv":..,"x":..,("y":..),"kid":..,"alg":..,"use":"sig"}]}`.
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// Signs `claims` as a compact JWT whose header holds alg, kid and typ "JWT".
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, AssertionError> {
        jsonwebtoken::encode(&self.header, claims, &self.key).map_err(AssertionError::Sign)
    }

    fn parse(alg: SigningAlg, pem: &str, origin: &str) -> Result<Self, AssertionError> {
        let invalid = |reason: String| AssertionError::InvalidKey {
            origin: origin.to_owned(),
            expected: alg.key_kind(),
            reason,
        };
        let public = public_jwk(alg, pem).map_err(invalid)?;
        let key = match alg {
            SigningAlg::Es256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            SigningAlg::EdDsa => EncodingKey::from_ed_pem(pem.as_bytes()),
        }
        .map_err(|e| invalid(e.to_string()))?;

        let kid = public.thumbprint();
        let mut header = Header::new(alg.jwt_algorithm());
        header.kid = Some(kid.clone());
        let jwks = public.jwks(alg, &kid);
        let signer = AssertionSigner {
            alg,
            key,
            header,
            kid,
            jwks,
        };
        // Sign once now so that a key jsonwebtoken cannot use fails at start, not per request.
        signer
            .sign(&serde_json::json!({}))
            .map_err(|e| invalid(e.to_string()))?;
        Ok(signer)
    }
}

/// The public members of a JWK, base64url-encoded.
enum PublicJwk {
    Ec { x: String, y: String },
    Okp { x: String },
}

impl PublicJwk {
    /// The RFC 7638 canonical form: the required members only, in lexical order, no spaces.
    fn canonical(&self) -> String {
        // The values are base64url, which needs no JSON escaping.
        match self {
            PublicJwk::Ec { x, y } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            PublicJwk::Okp { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
        }
    }

    fn thumbprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.canonical().as_bytes()))
    }

    fn jwks(&self, alg: SigningAlg, kid: &str) -> String {
        let key = match self {
            PublicJwk::Ec { x, y } => serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": x, "y": y,
                "kid": kid, "alg": alg.as_str(), "use": "sig",
            }),
            PublicJwk::Okp { x } => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": x,
                "kid": kid, "alg": alg.as_str(), "use": "sig",
            }),
        };
        serde_json::json!({ "keys": [key] }).to_string()
    }
}

/// Parses the PEM with the algorithm's own crate (which also checks the curve) and returns the
/// public key members.
fn public_jwk(alg: SigningAlg, pem: &str) -> Result<PublicJwk, String> {
    match alg {
        SigningAlg::Es256 => {
            let secret = p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
            let point = secret.public_key().to_sec1_point(false);
            match (point.x(), point.y()) {
                (Some(x), Some(y)) => Ok(PublicJwk::Ec {
                    x: URL_SAFE_NO_PAD.encode(x),
                    y: URL_SAFE_NO_PAD.encode(y),
                }),
                _ => Err("the public key is the point at infinity".to_owned()),
            }
        }
        SigningAlg::EdDsa => {
            let signing =
                ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
            Ok(PublicJwk::Okp {
                x: URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes()),
            })
        }
    }
}

/// A new random private key as PKCS#8 PEM.
fn fresh_pem(alg: SigningAlg) -> Result<Zeroizing<String>, AssertionError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    let encoded = match alg {
        SigningAlg::Es256 => {
            // A random 256-bit string is a valid P-256 scalar unless it is zero or at least the
            // group order, which happens with probability about 2^-32: draw again then.
            let secret = loop {
                OsRng.fill_bytes(bytes.as_mut());
                if let Ok(secret) = p256::SecretKey::from_slice(bytes.as_ref()) {
                    break secret;
                }
            };
            secret.to_pkcs8_pem(LineEnding::LF)
        }
        SigningAlg::EdDsa => {
            OsRng.fill_bytes(bytes.as_mut());
            ed25519_dalek::SigningKey::from_bytes(&bytes).to_pkcs8_pem(LineEnding::LF)
        }
    };
    encoded.map_err(|e| AssertionError::Encode(e.to_string()))
}

fn default_key_path(alg: SigningAlg, data_dir: &Path) -> PathBuf {
    data_dir.join(format!("identity-signing-{}.pem", alg.file_word()))
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>, AssertionError> {
    let text = fs::read_to_string(path).map_err(|source| AssertionError::Read {
        path: path.to_owned(),
        source,
    })?;
    crate::private_file::check(path).map_err(AssertionError::Exposed)?;
    Ok(Zeroizing::new(text))
}

/// Reads the default key file that already existed. Another process may have created it an
/// instant ago and not yet written it: while the file is empty, wait a little and read again.
fn read_existing_default(path: &Path) -> Result<Zeroizing<String>, AssertionError> {
    let mut pem = read_key_file(path)?;
    for _ in 0..EMPTY_FILE_RETRIES {
        if !pem.is_empty() {
            break;
        }
        thread::sleep(EMPTY_FILE_PAUSE);
        pem = read_key_file(path)?;
    }
    Ok(pem)
}

/// Creates the default key file with a fresh key. `Ok(None)` when the file already exists.
fn create_key_file(
    alg: SigningAlg,
    path: &Path,
) -> Result<Option<Zeroizing<String>>, AssertionError> {
    let write_error = |source| AssertionError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(write_error)?;
    }
    let mut file = match crate::private_file::create_new().open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(write_error(e)),
    };
    let pem = fresh_pem(alg)?;
    let written = file
        .write_all(pem.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        // Leave no empty or half-written key behind for the next start to trip over.
        let _ = fs::remove_file(path);
        return Err(write_error(e));
    }
    tracing::info!(path = %path.display(), alg = %alg, "created a new identity signing key");
    Ok(Some(pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Claims {
        sub: String,
        aud: String,
        exp: u64,
    }

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            aud: "app".into(),
            exp: jsonwebtoken::get_current_timestamp() + 60,
        }
    }

    fn verify_with_jwks(
        jwks: &str,
        token: &str,
        aud: &str,
    ) -> jsonwebtoken::errors::Result<Claims> {
        let set: JwkSet = serde_json::from_str(jwks).expect("jwks parses");
        let header = jsonwebtoken::decode_header(token)?;
        let kid = header.kid.as_deref().expect("kid in header");
        let jwk = set.find(kid).expect("kid in jwks");
        let key = DecodingKey::from_jwk(jwk)?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[aud]);
        jsonwebtoken::decode::<Claims>(token, &key, &validation).map(|data| data.claims)
    }

    fn both() -> [SigningAlg; 2] {
        [SigningAlg::Es256, SigningAlg::EdDsa]
    }

    #[test]
    fn algorithm_names_parse_and_print_as_jose_spells_them() {
        for alg in both() {
            assert_eq!(alg.as_str().parse::<SigningAlg>(), Ok(alg));
            assert_eq!(alg.to_string(), alg.as_str());
        }
        assert_eq!(
            "es256".parse::<SigningAlg>(),
            Err(UnknownSigningAlg("es256".into()))
        );
        assert!("RS256".parse::<SigningAlg>().is_err());
    }

    #[test]
    fn a_signed_token_verifies_against_the_served_jwks_with_the_right_audience() {
        for alg in both() {
            let signer = AssertionSigner::generate(alg).unwrap();
            let token = signer.sign(&claims()).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, alg.jwt_algorithm());
            assert_eq!(header.kid.as_deref(), Some(signer.kid()));
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            let got = verify_with_jwks(signer.jwks_json(), &token, "app").unwrap();
            assert_eq!(got.sub, "alice");
        }
    }

    #[test]
    fn a_token_for_another_audience_is_refused() {
        for alg in both() {
            let signer = AssertionSigner::generate(alg).unwrap();
            let token = signer.sign(&claims()).unwrap();
            assert!(verify_with_jwks(signer.jwks_json(), &token, "other-app").is_err());
        }
    }

    #[test]
    fn a_token_signed_by_another_key_does_not_verify() {
        for alg in both() {
            let ours = AssertionSigner::generate(alg).unwrap();
            let theirs = AssertionSigner::generate(alg).unwrap();
            assert_ne!(ours.kid(), theirs.kid());
            let token = theirs.sign(&claims()).unwrap();
            // Point the foreign token at our kid, so the only difference is the key.
            let set: JwkSet = serde_json::from_str(ours.jwks_json()).unwrap();
            let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
            let mut validation = Validation::new(alg.jwt_algorithm());
            validation.set_audience(&["app"]);
            assert!(jsonwebtoken::decode::<Claims>(&token, &key, &validation).is_err());
        }
    }

    #[test]
    fn a_tampered_payload_does_not_verify() {
        for alg in both() {
            let signer = AssertionSigner::generate(alg).unwrap();
            let token = signer.sign(&claims()).unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            let mut forged = claims();
            forged.sub = "mallory".into();
            let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
            let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
            assert!(verify_with_jwks(signer.jwks_json(), &tampered, "app").is_err());
        }
    }

    #[test]
    fn the_jwks_holds_one_signing_key_with_kid_alg_and_use() {
        for alg in both() {
            let signer = AssertionSigner::generate(alg).unwrap();
            let doc: serde_json::Value = serde_json::from_str(signer.jwks_json()).unwrap();
            let keys = doc["keys"].as_array().unwrap();
            assert_eq!(keys.len(), 1);
            let key = &keys[0];
            assert_eq!(key["kid"], signer.kid());
            assert_eq!(key["alg"], alg.as_str());
            assert_eq!(key["use"], "sig");
            assert!(key.get("d").is_none(), "no private member");
            match alg {
                SigningAlg::Es256 => {
                    assert_eq!(key["kty"], "EC");
                    assert_eq!(key["crv"], "P-256");
                    assert!(key["y"].is_string());
                }
                SigningAlg::EdDsa => {
                    assert_eq!(key["kty"], "OKP");
                    assert_eq!(key["crv"], "Ed25519");
                    assert!(key.get("y").is_none());
                }
            }
        }
    }

    /// RFC 7638 section 3, computed here without the module's helpers.
    fn thumbprint_of(members: &[(&str, &str)]) -> String {
        let mut sorted = members.to_vec();
        sorted.sort();
        let body: Vec<String> = sorted
            .iter()
            .map(|(k, v)| format!("\"{k}\":\"{v}\""))
            .collect();
        let canonical = format!("{{{}}}", body.join(","));
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    #[test]
    fn the_rfc_8037_example_key_has_the_published_thumbprint() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let expected = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
        assert_eq!(
            thumbprint_of(&[("kty", "OKP"), ("crv", "Ed25519"), ("x", x)]),
            expected
        );
        assert_eq!(PublicJwk::Okp { x: x.into() }.thumbprint(), expected);
    }

    #[test]
    fn the_rfc_8037_example_private_key_gets_the_published_thumbprint_as_kid() {
        // RFC 8037 appendix A.1: d = nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A.
        let d = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let seed: [u8; 32] = d.try_into().unwrap();
        let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap();
        let signer = AssertionSigner::from_pem(SigningAlg::EdDsa, &pem).unwrap();
        assert_eq!(signer.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint_of_the_served_key() {
        for alg in both() {
            let signer = AssertionSigner::generate(alg).unwrap();
            let doc: serde_json::Value = serde_json::from_str(signer.jwks_json()).unwrap();
            let key = &doc["keys"][0];
            let member = |name: &str| key[name].as_str().unwrap().to_owned();
            let expected = match alg {
                SigningAlg::Es256 => thumbprint_of(&[
                    ("kty", &member("kty")),
                    ("crv", &member("crv")),
                    ("x", &member("x")),
                    ("y", &member("y")),
                ]),
                SigningAlg::EdDsa => thumbprint_of(&[
                    ("kty", &member("kty")),
                    ("crv", &member("crv")),
                    ("x", &member("x")),
                ]),
            };
            assert_eq!(signer.kid(), expected);
        }
    }

    #[test]
    fn a_key_round_trips_through_its_pem() {
        for alg in both() {
            let pem = fresh_pem(alg).unwrap();
            let a = AssertionSigner::from_pem(alg, &pem).unwrap();
            let b = AssertionSigner::from_pem(alg, &pem).unwrap();
            assert_eq!(a.kid(), b.kid());
            assert_eq!(a.jwks_json(), b.jwks_json());
        }
    }

    #[test]
    fn a_key_of_the_other_algorithm_is_refused() {
        let ec = fresh_pem(SigningAlg::Es256).unwrap();
        let ed = fresh_pem(SigningAlg::EdDsa).unwrap();
        assert!(matches!(
            AssertionSigner::from_pem(SigningAlg::EdDsa, &ec),
            Err(AssertionError::InvalidKey { .. })
        ));
        assert!(matches!(
            AssertionSigner::from_pem(SigningAlg::Es256, &ed),
            Err(AssertionError::InvalidKey { .. })
        ));
    }

    /// Throwaway test keys made with `openssl genpkey` (PKCS#8 v1, as openssl writes them).
    const OPENSSL_ED25519: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEID/CO6EZFbYFQcZAP3Gpr8jP+xdk606D/L4keYxwYcNn
-----END PRIVATE KEY-----
";
    const OPENSSL_P256: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDJV4h0N6aQ065lqK
KLulVGfnL+KfMsD+Fs1Y9asDGKOhRANCAARb/HSHsmgxDjifEN5rxZc0zCj0C7H3
ANCrB2c9CRA9pOYnE59WZC/MilhbnCLQkKK1B2CEAx+NzNaok7qhGN3D
-----END PRIVATE KEY-----
";
    const OPENSSL_P384: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDAe7UbZ6VA63nVO6kYS
i/l/9rL748es3MgOKHSEAAkPnQ1X3+CBARFRcqVpq8lSgvShZANiAARg87CulGoi
aH2kmg6eGYH7ecRPHq30YsltDuULSLWgM1S/pIyvK8Z5Xyr9t9Mek7ej+f/ThiSb
MZU7PBowe8okkXH9S4VysaEabWaHhUBNjCYTB/C5iAt7/NdJ/jRyuY8=
-----END PRIVATE KEY-----
";

    #[test]
    fn keys_made_by_openssl_load_and_sign() {
        for (alg, pem) in [
            (SigningAlg::EdDsa, OPENSSL_ED25519),
            (SigningAlg::Es256, OPENSSL_P256),
        ] {
            let signer = AssertionSigner::from_pem(alg, pem).unwrap();
            let token = signer.sign(&claims()).unwrap();
            assert_eq!(
                verify_with_jwks(signer.jwks_json(), &token, "app")
                    .unwrap()
                    .sub,
                "alice"
            );
        }
    }

    #[test]
    fn a_p384_key_is_not_an_es256_key() {
        let err = AssertionSigner::from_pem(SigningAlg::Es256, OPENSSL_P384).unwrap_err();
        assert!(err.to_string().contains("P-256"), "{err}");
    }

    #[test]
    fn load_or_create_makes_the_file_once_with_mode_0600_and_keeps_the_kid() {
        let dir = tempfile::tempdir().unwrap();
        for alg in both() {
            let first = AssertionSigner::load_or_create(alg, None, dir.path()).unwrap();
            let path = dir
                .path()
                .join(format!("identity-signing-{}.pem", alg.file_word()));
            let written = fs::read_to_string(&path).unwrap();
            assert!(written.starts_with("-----BEGIN PRIVATE KEY-----"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
            let second = AssertionSigner::load_or_create(alg, None, dir.path()).unwrap();
            assert_eq!(first.kid(), second.kid());
            assert_eq!(fs::read_to_string(&path).unwrap(), written, "not rewritten");
        }
        // One file per algorithm, and nothing else.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn load_or_create_creates_a_missing_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested").join("data");
        let signer = AssertionSigner::load_or_create(SigningAlg::EdDsa, None, &data).unwrap();
        let again = AssertionSigner::load_or_create(SigningAlg::EdDsa, None, &data).unwrap();
        assert_eq!(signer.kid(), again.kid());
    }

    #[test]
    fn a_configured_key_file_is_read_and_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.pem");
        let missing = AssertionSigner::load_or_create(SigningAlg::Es256, Some(&path), dir.path());
        match missing {
            Err(AssertionError::Read { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected a read error, got {other:?}"),
        }
        assert!(!path.exists());

        let pem = fresh_pem(SigningAlg::Es256).unwrap();
        write_private(&path, pem.as_bytes());
        let expected = AssertionSigner::from_pem(SigningAlg::Es256, &pem).unwrap();
        let loaded =
            AssertionSigner::load_or_create(SigningAlg::Es256, Some(&path), dir.path()).unwrap();
        assert_eq!(loaded.kid(), expected.kid());
        // The default file was not made as well.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn write_private(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        crate::private_file::create_new()
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    /// Like ssh with a private key: a signing key file others may read is refused, naming
    /// the file and the fix.
    #[cfg(unix)]
    #[test]
    fn a_key_file_open_to_others_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.pem");
        write_private(&path, fresh_pem(SigningAlg::Es256).unwrap().as_bytes());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = AssertionSigner::load_or_create(SigningAlg::Es256, Some(&path), dir.path())
            .unwrap_err();
        assert!(matches!(err, AssertionError::Exposed(_)), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_key_file_holding_garbage_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let configured = dir.path().join("garbage.pem");
        write_private(&configured, b"this is not a key\n");
        let err = AssertionSigner::load_or_create(SigningAlg::Es256, Some(&configured), dir.path())
            .unwrap_err();
        assert!(matches!(err, AssertionError::InvalidKey { .. }));
        assert!(err.to_string().contains(&configured.display().to_string()));

        let default = default_key_path(SigningAlg::EdDsa, dir.path());
        write_private(
            &default,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let err = AssertionSigner::load_or_create(SigningAlg::EdDsa, None, dir.path()).unwrap_err();
        assert!(err.to_string().contains(&default.display().to_string()));
        assert!(err.to_string().contains("Ed25519"));
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let pem = fresh_pem(SigningAlg::EdDsa).unwrap();
        let signer = AssertionSigner::from_pem(SigningAlg::EdDsa, &pem).unwrap();
        let shown = format!("{signer:?}");
        assert!(shown.contains(signer.kid()));
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!shown.contains(&body));
    }
}
