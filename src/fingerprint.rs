//! SHA-256 fingerprints of certificates: how an operator pins a target's roots in config
//! (`root_fingerprints`) and how the signer names a root in logs and audit lines.
//!
//! Written as `openssl x509 -noout -fingerprint -sha256` prints them (`AB:CD:…`, 32 bytes);
//! parsed with or without colons, in either case, with an optional `sha256:` prefix.

use std::fmt;
use std::str::FromStr;

/// The SHA-256 digest of a certificate's DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `der`.
    pub fn of(der: &[u8]) -> Self {
        Self(crate::sha256(&[der]))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s
            .trim()
            .trim_start_matches("sha256:")
            .trim_start_matches("SHA256:")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)",
                crate::echo::truncated(s)
            ));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Self(out))
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_openssl_prints_and_plain_hex() {
        let f = Fingerprint::of(b"root");
        let shown = f.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        for form in [
            shown.clone(),
            shown.to_lowercase(),
            shown.replace(':', ""),
            format!("sha256:{}", shown.replace(':', "").to_lowercase()),
        ] {
            assert_eq!(form.parse::<Fingerprint>(), Ok(f), "{form}");
        }
        for bad in ["", "AB:CD", &"G".repeat(64), &"A".repeat(66)] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}
