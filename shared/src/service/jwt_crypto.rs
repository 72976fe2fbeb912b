//! The cryptography jsonwebtoken signs and verifies with: HMAC-SHA2 only.
//!
//! windi's tokens are HS256/HS384/HS512 with a shared secret (`JWT_ALGORITHM`). jsonwebtoken's
//! `rust_crypto` backend also links RSA, ECDSA and Ed25519 (the `rsa` crate carries
//! RUSTSEC-2023-0071), none of which windi ever calls; jsonwebtoken 12 lets a program bring its
//! own [`CryptoProvider`] instead, so this one is the few lines of HMAC that windi needs over
//! RustCrypto's `hmac` and `sha2`. Any other algorithm is refused (`InvalidAlgorithm`), and a
//! JWK helper is never called (windi reads no JWKs).

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{ErrorKind, Result},
    signature::{self, Signer, Verifier},
};
use sha2::{Sha256, Sha384, Sha512};

/// The provider: HMAC signers and verifiers, nothing else.
static HMAC_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes [`HMAC_ONLY`] the process's provider; idempotent. [`crate::service::auth::Tokens::new`]
/// calls it, so does anything else that encodes or decodes a token (the tests).
pub fn install() {
    // Err means a provider is installed already: this one, since windi installs no other.
    let _ = HMAC_ONLY.install_default();
}

/// One keyed HMAC for one algorithm.
#[derive(Clone)]
enum HmacKey {
    Hs256(Hmac<Sha256>),
    Hs384(Hmac<Sha384>),
    Hs512(Hmac<Sha512>),
}

impl HmacKey {
    fn new(algorithm: Algorithm, family: AlgorithmFamily, secret: &[u8]) -> Result<Self> {
        if family != AlgorithmFamily::Hmac {
            return Err(ErrorKind::InvalidKeyFormat.into());
        }
        let invalid = |_| ErrorKind::InvalidKeyFormat;
        Ok(match algorithm {
            Algorithm::HS256 => Self::Hs256(Hmac::new_from_slice(secret).map_err(invalid)?),
            Algorithm::HS384 => Self::Hs384(Hmac::new_from_slice(secret).map_err(invalid)?),
            Algorithm::HS512 => Self::Hs512(Hmac::new_from_slice(secret).map_err(invalid)?),
            _ => return Err(ErrorKind::InvalidAlgorithm.into()),
        })
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hs256(_) => Algorithm::HS256,
            Self::Hs384(_) => Algorithm::HS384,
            Self::Hs512(_) => Algorithm::HS512,
        }
    }
}

/// The MAC of `message` under a copy of the keyed state.
fn tag<M: Mac + Clone>(mac: &M, message: &[u8]) -> Vec<u8> {
    let mut mac = mac.clone();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Compares in constant time (`verify_slice`).
fn check<M: Mac + Clone>(mac: &M, message: &[u8], signature: &[u8]) -> bool {
    let mut mac = mac.clone();
    mac.update(message);
    mac.verify_slice(signature).is_ok()
}

impl Signer<Vec<u8>> for HmacKey {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        Ok(match self {
            Self::Hs256(mac) => tag(mac, message),
            Self::Hs384(mac) => tag(mac, message),
            Self::Hs512(mac) => tag(mac, message),
        })
    }
}

impl Verifier<Vec<u8>> for HmacKey {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        let valid = match self {
            Self::Hs256(mac) => check(mac, message, signature),
            Self::Hs384(mac) => check(mac, message, signature),
            Self::Hs512(mac) => check(mac, message, signature),
        };
        valid.then_some(()).ok_or_else(signature::Error::new)
    }
}

impl JwtSigner for HmacKey {
    fn algorithm(&self) -> Algorithm {
        HmacKey::algorithm(self)
    }
}

impl JwtVerifier for HmacKey {
    fn algorithm(&self) -> Algorithm {
        HmacKey::algorithm(self)
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Ok(Box::new(HmacKey::new(
        *algorithm,
        key.family(),
        key.as_bytes(),
    )?))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(HmacKey::new(
        *algorithm,
        key.family(),
        key.try_get_as_bytes()?,
    )?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use jsonwebtoken::{Header, Validation, crypto::sign, decode, encode};
    use serde::{Deserialize, Serialize};

    use super::*;

    const SECRET: &[u8] = b"unit-test-secret-unit-test-secret-0123";

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    /// RFC 4231 test case 2 ("Jefe"), HMAC-SHA-256: the provider computes the standard MAC.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        install();
        let key = EncodingKey::from_secret(b"Jefe").unwrap();
        let signature = sign(b"what do ya want for nothing?", &key, Algorithm::HS256).unwrap();
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &signature,
        )
        .unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn every_hmac_algorithm_round_trips_and_rejects_a_forgery() {
        install();
        let claims = Claims {
            sub: "1".into(),
            exp: jsonwebtoken::get_current_timestamp() + 60,
        };
        for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = encode(
                &Header::new(algorithm),
                &claims,
                &EncodingKey::from_secret(SECRET).unwrap(),
            )
            .unwrap();
            let key = DecodingKey::from_secret(SECRET).unwrap();
            let decoded = decode::<Claims>(&token, &key, &Validation::new(algorithm)).unwrap();
            assert_eq!(decoded.claims, claims);

            let other = DecodingKey::from_secret(b"another-secret-another-secret-0123").unwrap();
            assert!(decode::<Claims>(&token, &other, &Validation::new(algorithm)).is_err());
        }
    }

    #[test]
    fn other_algorithms_are_refused() {
        install();
        let key = EncodingKey::from_secret(SECRET).unwrap();
        assert!(sign(b"message", &key, Algorithm::RS256).is_err());
        assert!(sign(b"message", &key, Algorithm::ES256).is_err());
    }
}
