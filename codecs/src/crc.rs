//! CRC-16 with the CCITT polynomial (0x1021), as the serial ECG protocols
//! use it: SCP-ECG records and sections (CRC-16/CCITT-FALSE, initial value
//! 0xFFFF) and XMODEM-CRC blocks (CRC-16/XMODEM, initial value 0; some carts
//! also use it for SCP-ECG records).

/// CRC-16 with polynomial 0x1021, MSB first, no reflection or final XOR.
fn crc16(data: &[u8], init: u16) -> u16 {
    let mut crc = init;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// CRC-16/CCITT-FALSE, the one SCP-ECG specifies.
pub fn ccitt_false(data: &[u8]) -> u16 {
    crc16(data, 0xFFFF)
}

/// CRC-16/XMODEM.
pub fn xmodem(data: &[u8]) -> u16 {
    crc16(data, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalogue's check values (CRC of the ASCII digits 1 to 9).
    #[test]
    fn check_values() {
        assert_eq!(ccitt_false(b"123456789"), 0x29B1);
        assert_eq!(xmodem(b"123456789"), 0x31C3);
    }
}
