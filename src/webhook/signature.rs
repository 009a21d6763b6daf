//! HubSpot webhook signatures (docs/HUBSPOT.md §13), verified against the raw body.
//!
//! - v3: `base64(HMAC-SHA256(secret, method + uri + body + timestamp))`, where `uri` is the
//!   public URL HubSpot called with twelve escapes decoded, and the timestamp (epoch ms,
//!   the header string as sent) must be within five minutes of now, either way (HubSpot
//!   asks to refuse older ones; one from the future is refused too, our choice, so a
//!   captured request cannot be stored and replayed later).
//! - v1: `hex(SHA-256(secret + body))`; v2: `hex(SHA-256(secret + method + uri + body))`.
//!   Neither carries a timestamp, so neither resists replay: accepted only when asked.
//!
//! Every comparison is constant-time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::timestamp::Millis;

/// How far a v3 timestamp may be from now, either way.
pub const MAX_SKEW_MS: i64 = 300_000;

/// A signature scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
    V3,
}

/// What was received, as received.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    pub method: &'a str,
    /// The full public URL HubSpot called, query string included, still escaped.
    pub url: &'a str,
    pub body: &'a [u8],
    /// `X-HubSpot-Request-Timestamp` (v3).
    pub timestamp: Option<&'a str>,
    /// `X-HubSpot-Signature-v3` (base64) or `X-HubSpot-Signature` (hex).
    pub signature: &'a str,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no X-HubSpot-Request-Timestamp header")]
    MissingTimestamp,
    #[error("timestamp `{0}` is not epoch milliseconds")]
    BadTimestamp(String),
    #[error("timestamp is {skew_ms} ms away from now (at most {MAX_SKEW_MS} allowed)")]
    Stale { skew_ms: i64 },
    #[error("signature does not match")]
    Mismatch,
}

/// The checks that need no body: a fresh timestamp (v3) and a signature of the right
/// shape. The receiver runs them before it reads a byte of the body, so an unsigned or
/// stale request costs no memory.
///
/// # Errors
/// The first reason to refuse the request.
pub fn precheck(
    version: Version,
    timestamp: Option<&str>,
    signature: &str,
    now: Millis,
) -> Result<(), Rejection> {
    match version {
        Version::V3 => {
            let timestamp = timestamp.ok_or(Rejection::MissingTimestamp)?;
            let at: i64 = timestamp
                .trim()
                .parse()
                .map_err(|_| Rejection::BadTimestamp(timestamp.to_owned()))?;
            let skew_ms = now.0.saturating_sub(at).saturating_abs();
            if skew_ms > MAX_SKEW_MS {
                return Err(Rejection::Stale { skew_ms });
            }
            let sent = STANDARD
                .decode(signature.trim())
                .map_err(|_| Rejection::Mismatch)?;
            if sent.len() != 32 {
                return Err(Rejection::Mismatch);
            }
        }
        Version::V1 | Version::V2 => {
            let sig = signature.trim();
            if sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Rejection::Mismatch);
            }
        }
    }
    Ok(())
}

/// Checks `signed` under `version` with the app's client `secret` at `now`.
///
/// # Errors
/// The first reason to refuse the request.
pub fn verify(
    secret: &[u8],
    version: Version,
    signed: &Signed<'_>,
    now: Millis,
) -> Result<(), Rejection> {
    precheck(version, signed.timestamp, signed.signature, now)?;
    match version {
        Version::V3 => {
            let timestamp = signed.timestamp.ok_or(Rejection::MissingTimestamp)?;
            let sent = STANDARD
                .decode(signed.signature.trim())
                .map_err(|_| Rejection::Mismatch)?;
            // `verify_slice` compares in constant time.
            mac_v3(secret, signed.method, signed.url, signed.body, timestamp)
                .verify_slice(&sent)
                .map_err(|_| Rejection::Mismatch)
        }
        Version::V1 | Version::V2 => {
            let mut hash = Sha256::new();
            hash.update(secret);
            if version == Version::V2 {
                hash.update(signed.method.as_bytes());
                hash.update(signed.url.as_bytes());
            }
            hash.update(signed.body);
            let expected = hex(&hash.finalize());
            let sent = signed.signature.trim().to_ascii_lowercase();
            if bool::from(expected.as_bytes().ct_eq(sent.as_bytes())) {
                Ok(())
            } else {
                Err(Rejection::Mismatch)
            }
        }
    }
}

/// Decodes the twelve escapes HubSpot decodes before signing (either case of hex);
/// every other escape stays as it is.
pub fn decode_uri(url: &str) -> String {
    const DECODED: [(&str, char); 12] = [
        ("3A", ':'),
        ("2F", '/'),
        ("3F", '?'),
        ("40", '@'),
        ("21", '!'),
        ("24", '$'),
        ("27", '\''),
        ("28", '('),
        ("29", ')'),
        ("2A", '*'),
        ("2C", ','),
        ("3B", ';'),
    ];
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).map(str::to_ascii_uppercase);
        match code.and_then(|c| DECODED.iter().find(|(k, _)| *k == c)) {
            Some((_, ch)) => {
                out.push(*ch);
                rest = &rest[i + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The v3 signature of a request, as HubSpot computes it; for tests and for sending
/// test deliveries.
pub fn sign_v3(secret: &[u8], method: &str, url: &str, body: &[u8], timestamp: &str) -> String {
    STANDARD.encode(
        mac_v3(secret, method, url, body, timestamp)
            .finalize()
            .into_bytes(),
    )
}

/// HMAC-SHA256 over `method + decoded url + body + timestamp`.
fn mac_v3(secret: &[u8], method: &str, url: &str, body: &[u8], timestamp: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(method.as_bytes());
    mac.update(decode_uri(url).as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const URL: &str = "https://www.example.com/webhook_uri";
    const BODY_A: &str = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;
    const SINGLE: &str = "{'example_field':'example_value'}";
    const DOUBLE: &str = r#"{"example_field":"example_value"}"#;

    fn check(
        version: Version,
        method: &str,
        url: &str,
        body: &str,
        ts: Option<&str>,
        sig: &str,
    ) -> Result<(), Rejection> {
        let now = ts.map_or(Millis(0), |t| Millis(t.parse().unwrap()));
        let signed = Signed {
            method,
            url,
            body: body.as_bytes(),
            timestamp: ts,
            signature: sig,
        };
        verify(SECRET, version, &signed, now)
    }

    /// The vectors of docs/HUBSPOT.md §13, rows A to I.
    #[test]
    fn hubspot_test_vectors() {
        let cases = [
            (
                "A",
                Version::V1,
                "POST",
                URL,
                BODY_A,
                None,
                "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de",
            ),
            (
                "B",
                Version::V1,
                "POST",
                URL,
                SINGLE,
                None,
                "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750",
            ),
            (
                "C",
                Version::V2,
                "GET",
                URL,
                "",
                None,
                "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e",
            ),
            (
                "D",
                Version::V2,
                "POST",
                URL,
                DOUBLE,
                None,
                "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900",
            ),
            (
                "E",
                Version::V2,
                "POST",
                URL,
                SINGLE,
                None,
                "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383",
            ),
            (
                "F",
                Version::V3,
                "POST",
                URL,
                SINGLE,
                Some("1693657560000"),
                "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=",
            ),
            (
                "G",
                Version::V3,
                "POST",
                URL,
                SINGLE,
                Some("1700000300000"),
                "RnbPH7+UMKVkbV32P8bz450N4M56aPmcru1+D3kSDtw=",
            ),
            (
                "H",
                Version::V3,
                "POST",
                URL,
                DOUBLE,
                Some("1693657560000"),
                "oaA3M5dEtt6kFsseJD/Hv/x+JNl1vsoxFj4oxmwP6Go=",
            ),
            (
                "I",
                Version::V3,
                "POST",
                "https://www.example.com/webhook_uri?tag=a%3Ab%2Cc&q=x%20y",
                BODY_A,
                Some("1700000000000"),
                "vEr9EBijH0R7RL/MshyaUsxbXmnEOVSP0ePBGWoKVo4=",
            ),
        ];
        for (row, version, method, url, body, ts, sig) in cases {
            assert_eq!(
                check(version, method, url, body, ts, sig),
                Ok(()),
                "row {row}"
            );
        }
    }

    #[test]
    fn refusals() {
        let ts = Some("1693657560000");
        let good = "oaA3M5dEtt6kFsseJD/Hv/x+JNl1vsoxFj4oxmwP6Go=";
        let tampered = r#"{"example_field":"example_valuf"}"#;
        assert_eq!(
            check(Version::V3, "POST", URL, tampered, ts, good),
            Err(Rejection::Mismatch)
        );
        assert_eq!(
            check(
                Version::V3,
                "POST",
                "https://www.example.com/other",
                DOUBLE,
                ts,
                good
            ),
            Err(Rejection::Mismatch)
        );
        assert_eq!(
            check(Version::V3, "POST", URL, DOUBLE, None, good),
            Err(Rejection::MissingTimestamp)
        );
        // Signing the undecoded URI of row I gives another signature.
        let undecoded = "UQMd/rBCsyQazOAXMk/thXV85Oac7Yoy9m9i6d63vzY=";
        let url_i = "https://www.example.com/webhook_uri?tag=a%3Ab%2Cc&q=x%20y";
        assert_eq!(
            check(
                Version::V3,
                "POST",
                url_i,
                BODY_A,
                Some("1700000000000"),
                undecoded
            ),
            Err(Rejection::Mismatch)
        );
        let signed = Signed {
            method: "POST",
            url: URL,
            body: DOUBLE.as_bytes(),
            timestamp: ts,
            signature: good,
        };
        let wrong = verify(
            b"another-secret",
            Version::V3,
            &signed,
            Millis(1_693_657_560_000),
        );
        assert_eq!(wrong, Err(Rejection::Mismatch));
        for now in [1_693_657_560_000 + 300_001, 1_693_657_560_000 - 300_001] {
            assert!(
                matches!(
                    verify(SECRET, Version::V3, &signed, Millis(now)),
                    Err(Rejection::Stale { .. })
                ),
                "{now}"
            );
        }
        assert_eq!(
            verify(
                SECRET,
                Version::V3,
                &signed,
                Millis(1_693_657_560_000 + 300_000)
            ),
            Ok(())
        );
    }

    #[test]
    fn decodes_only_the_twelve() {
        assert_eq!(
            decode_uri("/a%3Ab%3ac%2F%20%26%3D%40%"),
            "/a:b:c/%20%26%3D@%"
        );
    }
}
