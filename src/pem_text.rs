//! PEM text in and out, for certificates and CSRs (a leaf module: it imports nothing from the
//! crate). Named `pem_text` so it does not shadow the `pem` crate.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// PEM text that does not hold what it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed PEM: {0}")]
pub struct PemError(pub String);

/// PEM-encodes `der` with 64-column lines and a trailing newline.
pub fn encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Every `CERTIFICATE` block of `text`, in order (other blocks are skipped).
pub fn certificates(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        let text = encode("CERTIFICATE", &der);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n") && text.ends_with("-----\n"));
        let twice = format!("{text}{text}");
        let certs = certificates(twice.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), &der[..]);
        assert!(
            certificates(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
