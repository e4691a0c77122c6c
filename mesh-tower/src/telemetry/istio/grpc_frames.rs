//! Counts the gRPC messages in a body as its bytes go by: each message is a 5-byte prefix
//! (compressed flag, big-endian length) and that many bytes, split across frames anyhow.

/// A running count of the messages whose prefix has been seen.
#[derive(Debug, Default)]
pub(crate) struct GrpcFrames {
    /// Prefix bytes read of the next message (0..5).
    prefix_read: u8,
    prefix: [u8; 4],
    /// Bytes of the current message still to skip.
    remaining: u64,
    messages: u64,
}

impl GrpcFrames {
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(data.len());
                data = &data[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            // The flag byte, then four length bytes.
            if self.prefix_read > 0 {
                self.prefix[usize::from(self.prefix_read) - 1] = data[0];
            }
            data = &data[1..];
            self.prefix_read += 1;
            if self.prefix_read == 5 {
                self.prefix_read = 0;
                self.remaining = u64::from(u32::from_be_bytes(self.prefix));
                self.messages += 1;
            }
        }
    }

    pub(crate) fn messages(&self) -> u64 {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7, len as usize));
        m
    }

    #[test]
    fn counts_messages_however_they_are_split() {
        let stream: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        for split in [1, 2, 4, 5, 7, 64, stream.len()] {
            let mut frames = GrpcFrames::default();
            for chunk in stream.chunks(split) {
                frames.feed(chunk);
            }
            assert_eq!(frames.messages(), 4, "split every {split} bytes");
        }
    }

    #[test]
    fn a_partial_prefix_is_not_a_message() {
        let mut frames = GrpcFrames::default();
        frames.feed(&[0, 0, 0]);
        assert_eq!(frames.messages(), 0);
    }
}
