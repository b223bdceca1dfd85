//! Certificate serial numbers as Vault and openssl print them: lower-case hex, a colon between
//! bytes (`3d:6f:ca:…`). What the ledger, `revoke --serial`, the CRL checks and the response's
//! summary all compare.

/// `raw` (the serial's big-endian bytes as DER encodes them) in colon-separated lower-case
/// hex. The `00` byte DER puts in front of a serial whose first byte has its top bit set (to
/// keep the INTEGER positive) is not part of the number and is not printed: Vault's
/// `serial_number` and openssl print `90:fc:…`, not `00:90:fc:…`. Printed with it, such a
/// serial (from Vault: one a byte shorter than usual whose first byte is 0x80 or more, seen
/// in CI) never matched what Vault and the operator call it.
pub fn colon_hex(raw: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let raw = match raw {
        [0, next, ..] if *next >= 0x80 => &raw[1..],
        _ => raw,
    };
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
        // DER's sign byte is not part of the number.
        assert_eq!(super::colon_hex(&[0x00, 0x90, 0xfc]), "90:fc");
        assert_eq!(super::colon_hex(&[0x00]), "00");
        assert_eq!(super::colon_hex(&[0x7f, 0x00]), "7f:00");
    }
}
