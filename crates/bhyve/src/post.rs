//! The POST data port (`amd64/post.c`): 0x84 reads as 0xff ("some
//! garbage"), byte reads only; it takes no writes.  Port 0x80, the POST code
//! port guests write progress codes to, has no handler in bhyve: it falls
//! to the default handler (reads all ones, writes dropped; refused with
//! `-e`), and so it does here.

use crate::bus::PioDevice;

pub const POST_PORT: u16 = 0x84;

#[derive(Debug, Default)]
pub struct Post;

impl PioDevice for Post {
    fn pio_read(&mut self, _port: u16, data: &mut [u8]) -> bool {
        match data {
            [b] => {
                *b = 0xff;
                true
            }
            _ => false,
        }
    }

    /// Registered for IN only (`IOPORT_F_IN`): an OUT is refused.
    fn pio_write(&mut self, _port: u16, _data: &[u8]) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ff_bytes_only() {
        let mut p = Post;
        let mut b = [0u8];
        assert!(p.pio_read(POST_PORT, &mut b));
        assert_eq!(b, [0xff]);
        assert!(!p.pio_read(POST_PORT, &mut [0u8; 2]));
        assert!(!p.pio_write(POST_PORT, &[0x12]));
    }
}
