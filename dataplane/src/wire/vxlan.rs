//! The VXLAN header (RFC 7348 section 5) as a view over bytes.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

/// Bytes of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid. Must be set (RFC 7348 section 5).
pub const FLAG_I: u8 = 0x08;

pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// A view that has been checked to hold the whole header.
    pub fn new_checked(buffer: T) -> Option<VxlanPacket<T>> {
        (buffer.as_ref().len() >= HEADER_LEN).then_some(VxlanPacket { buffer })
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([0, b[4], b[5], b[6]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Writes a header with only the I flag set and the given VNI (24 bits).
    pub fn emit(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        b[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, 0, 0, 0, 0]);
        b[4..7].copy_from_slice(&vni.to_be_bytes()[1..4]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_then_read_round_trips_the_vni_and_sets_only_the_i_flag() {
        let mut b = [0xffu8; 8];
        VxlanPacket::new_checked(&mut b[..]).unwrap().emit(0xabcdef);
        let v = VxlanPacket::new_checked(&b[..]).unwrap();
        assert_eq!(v.flags(), FLAG_I);
        assert_eq!(v.vni(), 0xabcdef);
        assert_eq!(b[7], 0);
    }

    #[test]
    fn short_buffer_is_refused() {
        assert!(VxlanPacket::new_checked(&[0u8; 7][..]).is_none());
    }
}
