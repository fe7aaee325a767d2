//! A small binary encoding for the server's own formats: log entry envelopes, member records,
//! snapshot payloads and peer frames.
//!
//! Integers are LEB128 varints, byte strings a varint length and the bytes, like the Raft core's
//! codec. Decoding checks every length against the remaining input before allocating and never
//! panics: these bytes come from peers and from disk.

use bytes::{BufMut, Bytes, BytesMut};

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("input ended early while reading {0}")]
    Truncated(&'static str),
    #[error("varint longer than 10 bytes while reading {0}")]
    VarintOverflow(&'static str),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u64 },
    #[error("{what}: length {length} exceeds the remaining input")]
    LengthTooLarge { what: &'static str, length: u64 },
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
}

pub fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

pub fn put_bytes(buf: &mut BytesMut, data: &[u8]) {
    put_varint(buf, data.len() as u64);
    buf.put_slice(data);
}

pub fn put_str(buf: &mut BytesMut, text: &str) {
    put_bytes(buf, text.as_bytes());
}

pub fn put_strings(buf: &mut BytesMut, items: &[String]) {
    put_varint(buf, items.len() as u64);
    for item in items {
        put_str(buf, item);
    }
}

/// Reads values from a `Bytes` buffer; byte strings are slices of it, not copies.
pub struct Reader<'a> {
    input: &'a Bytes,
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a Bytes) -> Reader<'a> {
        Reader { input, position: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.input.len() - self.position
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        let byte = *self
            .input
            .get(self.position)
            .ok_or(WireError::Truncated(what))?;
        self.position += 1;
        Ok(byte)
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        for shift_index in 0..10u32 {
            let byte = self.u8(what)?;
            if shift_index == 9 && byte > 1 {
                return Err(WireError::VarintOverflow(what));
            }
            value |= u64::from(byte & 0x7f) << (7 * shift_index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::VarintOverflow(what))
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(WireError::UnknownTag {
                what,
                tag: u64::from(tag),
            }),
        }
    }

    /// A count or length that must fit the remaining input (every item takes at least a byte).
    pub fn length(&mut self, what: &'static str) -> Result<usize, WireError> {
        let length = self.varint(what)?;
        if length > self.remaining() as u64 {
            return Err(WireError::LengthTooLarge { what, length });
        }
        Ok(length as usize)
    }

    pub fn bytes(&mut self, what: &'static str) -> Result<Bytes, WireError> {
        let length = self.length(what)?;
        self.take(length, what)
    }

    /// The next `length` bytes, as a slice.
    pub fn take(&mut self, length: usize, what: &'static str) -> Result<Bytes, WireError> {
        if length > self.remaining() {
            return Err(WireError::LengthTooLarge {
                what,
                length: length as u64,
            });
        }
        let slice = self.input.slice(self.position..self.position + length);
        self.position += length;
        Ok(slice)
    }

    pub fn string(&mut self, what: &'static str) -> Result<String, WireError> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::NotUtf8 { what })
    }

    pub fn strings(&mut self, what: &'static str) -> Result<Vec<String>, WireError> {
        let count = self.length(what)?;
        (0..count).map(|_| self.string(what)).collect()
    }

    /// The rest of the input, as a slice.
    pub fn rest(&mut self) -> Bytes {
        let slice = self.input.slice(self.position..);
        self.position = self.input.len();
        slice
    }

    pub fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(WireError::TrailingBytes(extra)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let mut buf = BytesMut::new();
        for value in [0u64, 1, 127, 128, 300, u64::MAX] {
            put_varint(&mut buf, value);
        }
        put_str(&mut buf, "héllo");
        put_strings(&mut buf, &["a".to_string(), String::new()]);
        buf.put_u8(1);
        let input = buf.freeze();
        let mut reader = Reader::new(&input);
        for value in [0u64, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(reader.varint("v"), Ok(value));
        }
        assert_eq!(reader.string("s").as_deref(), Ok("héllo"));
        assert_eq!(
            reader.strings("list"),
            Ok(vec!["a".to_string(), String::new()])
        );
        assert_eq!(reader.bool("b"), Ok(true));
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let overlong = Bytes::from_static(&[0xff; 11]);
        assert!(matches!(
            Reader::new(&overlong).varint("v"),
            Err(WireError::VarintOverflow(_))
        ));
        let too_long = Bytes::from_static(&[0x05, b'a']);
        assert!(matches!(
            Reader::new(&too_long).bytes("b"),
            Err(WireError::LengthTooLarge { .. })
        ));
        let bad_utf8 = Bytes::from_static(&[0x01, 0xff]);
        assert!(matches!(
            Reader::new(&bad_utf8).string("s"),
            Err(WireError::NotUtf8 { .. })
        ));
        let empty = Bytes::new();
        assert_eq!(Reader::new(&empty).u8("x"), Err(WireError::Truncated("x")));
    }
}
