//! Certificate serial numbers as Vault and openssl print them: lower-case hex, a colon between
//! bytes (`3d:6f:ca:…`). What the ledger, `revoke --serial`, the CRL checks and the response's
//! summary all compare.

/// `raw` (the serial's big-endian bytes as encoded) in colon-separated lower-case hex.
pub fn colon_hex(raw: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(raw.len() * 3);
    for (i, b) in raw.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn prints_as_vault_does() {
        assert_eq!(super::colon_hex(&[0x3d, 0x0f, 0xa0]), "3d:0f:a0");
        assert_eq!(super::colon_hex(&[]), "");
    }
}
