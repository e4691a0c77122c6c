//! Counts the gRPC messages in a body as its bytes go by: each message is a 5-byte prefix
//! (compressed flag, big-endian length) and that many bytes, split across frames anyhow.
//! Istio's `istio_*_messages_total` count the messages; gRPC's
//! `*_total_compressed_message_size` add up the lengths of the messages received whole (the
//! bytes on the wire after compression, without the prefix).

/// A running count of the messages whose prefix has been seen, and of the bytes of those
/// received whole.
#[derive(Debug, Default)]
pub(crate) struct GrpcFrames {
    /// Prefix bytes read of the next message (0..5).
    prefix_read: u8,
    prefix: [u8; 4],
    /// Bytes of the current message still to skip.
    remaining: u64,
    /// The length of the current message.
    current: u64,
    messages: u64,
    message_bytes: u64,
}

impl GrpcFrames {
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(data.len());
                data = &data[skip..];
                self.remaining -= skip as u64;
                if self.remaining == 0 {
                    self.message_bytes += self.current;
                }
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
                self.current = self.remaining;
                self.messages += 1;
            }
        }
    }

    pub(crate) fn messages(&self) -> u64 {
        self.messages
    }

    /// The payload bytes of the messages received whole (an empty message counts at its
    /// prefix; one cut off part way does not count).
    pub(crate) fn message_bytes(&self) -> u64 {
        self.message_bytes
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
            assert_eq!(frames.message_bytes(), 304, "split every {split} bytes");
        }
    }

    #[test]
    fn a_partial_prefix_is_not_a_message() {
        let mut frames = GrpcFrames::default();
        frames.feed(&[0, 0, 0]);
        assert_eq!(frames.messages(), 0);
    }

    #[test]
    fn a_message_cut_off_adds_no_bytes() {
        let mut frames = GrpcFrames::default();
        frames.feed(&message(10)[..8]);
        assert_eq!((frames.messages(), frames.message_bytes()), (1, 0));
        frames.feed(&[7; 7]);
        assert_eq!((frames.messages(), frames.message_bytes()), (1, 10));
    }
}
