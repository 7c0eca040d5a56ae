//! Handles: what travels between processes instead of an array's bytes.
//!
//! # Invariants
//!
//! 1. A handle is plain data: 64 bytes plus 16 per dimension. Decoding any bytes gives a
//!    handle or a typed error, never a panic; nothing in it is trusted until the pool has
//!    validated it against the live array (`Pool::attach`): the pool id, the header block
//!    (bounds, alignment, allocated, generation), the header's magic and nonce, the token,
//!    and that the view stays inside the array's data.
//! 2. A handle with a token keeps its array alive until the token is claimed or cancelled.
//!
//! ```text
//! 0   "PSH1"      magic and version
//! 4   flags       u8: bit 0 = a token follows
//! 5   ndim        u8
//! 6   meta seg    u16
//! 8   pool id     16 bytes
//! 24  header      Block::to_bits
//! 32  nonce       u64
//! 40  token       index u32, generation u32 (low bits)
//! 48  offset      u64: bytes from the data start
//! 56  token       generation u32 (high bits)
//! 60  reserved    u32, zero
//! 64  shape       u64 x ndim, then strides i64 x ndim
//! ```

use shm_arena::Block;
use shm_sync::Token;

use crate::error::HandleError;
use crate::header::MAX_DIMS;

const MAGIC: &[u8; 4] = b"PSH1";
/// Bytes of a handle's fixed part.
pub const HANDLE_FIXED_LEN: usize = 64;

/// A reference to an array (or a view) of a pool, to send to another process of the pool.
///
/// # Examples
///
/// ```
/// use shm_ndarray::{DType, Handle, Pool, PoolOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::create(&PoolOptions::new().segment_capacity(1 << 20))?;
/// let a = pool.empty(&DType::of::<f64>(), &[4, 4], false)?;
/// let bytes = a.handle()?.to_bytes();
/// assert_eq!(bytes.len(), 64 + 2 * 16);
/// let b = pool.attach(&Handle::from_bytes(&bytes)?)?; // in another process, the same
/// assert!(a.same_array(&b));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    pub(crate) pool: [u8; 16],
    pub(crate) meta_segment: u16,
    pub(crate) header: Block,
    pub(crate) nonce: u64,
    pub(crate) token: Option<Token>,
    pub(crate) offset: u64,
    pub(crate) shape: Vec<u64>,
    pub(crate) strides: Vec<i64>,
}

impl Handle {
    /// The encoded handle.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HANDLE_FIXED_LEN + 16 * self.shape.len());
        out.extend_from_slice(MAGIC);
        out.push(u8::from(self.token.is_some()));
        out.push(self.shape.len() as u8);
        out.extend_from_slice(&self.meta_segment.to_le_bytes());
        out.extend_from_slice(&self.pool);
        out.extend_from_slice(&self.header.to_bits().to_le_bytes());
        out.extend_from_slice(&self.nonce.to_le_bytes());
        let (index, generation) = self.token.map_or((0, 0), |t| (t.index, t.generation));
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&(generation as u32).to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        // The whole generation travels: a slot reused 2^32 times must not make every later
        // token of it stale (found in review; handles of older builds have zero here).
        out.extend_from_slice(&((generation >> 32) as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for s in &self.shape {
            out.extend_from_slice(&s.to_le_bytes());
        }
        for s in &self.strides {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    /// Decodes a handle (invariant 1: any bytes, never a panic).
    ///
    /// # Errors
    ///
    /// [`HandleError::Malformed`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HandleError> {
        let bad = HandleError::Malformed;
        if bytes.len() < HANDLE_FIXED_LEN {
            return Err(bad("shorter than a handle"));
        }
        if &bytes[0..4] != MAGIC {
            return Err(bad("wrong magic or version"));
        }
        let flags = bytes[4];
        if flags & !1 != 0 {
            return Err(bad("unknown flags"));
        }
        let ndim = bytes[5] as usize;
        if ndim > MAX_DIMS {
            return Err(bad("more than 64 dimensions"));
        }
        if bytes.len() != HANDLE_FIXED_LEN + 16 * ndim {
            return Err(bad("length does not match its dimensions"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        if u32_at(60) != 0 || (flags & 1 == 0 && (u64_at(40) != 0 || u32_at(56) != 0)) {
            // Every byte is read: two different byte strings never decode to one handle.
            return Err(bad("reserved bytes, or token bytes without a token, are not zero"));
        }
        let token = (flags & 1 != 0)
            .then(|| Token { index: u32_at(40), generation: u64::from(u32_at(56)) << 32 | u64::from(u32_at(44)) });
        if token.is_some_and(|t| t.generation >> 62 != 0) {
            // A token table slot keeps 62 bits of generation; more would alias (found in review).
            return Err(bad("token generation beyond 62 bits"));
        }
        let shape = (0..ndim).map(|i| u64_at(HANDLE_FIXED_LEN + 8 * i)).collect();
        let strides = (0..ndim).map(|i| u64_at(HANDLE_FIXED_LEN + 8 * (ndim + i)) as i64).collect();
        Ok(Self {
            meta_segment: u16::from_le_bytes([bytes[6], bytes[7]]),
            pool: bytes[8..24].try_into().expect("16 bytes"),
            header: Block::from_bits(u64_at(24)),
            nonce: u64_at(32),
            token,
            offset: u64_at(48),
            shape,
            strides,
        })
    }

    /// Whether the handle carries a transfer token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The view's shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The pool it belongs to.
    pub fn pool_id(&self) -> [u8; 16] {
        self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_generation_beyond_32_bits_round_trips() {
        let token = Token { index: 7, generation: (1 << 40) | 5 };
        let h = Handle {
            meta_segment: 0,
            pool: [1; 16],
            header: Block::from_bits(0),
            nonce: 9,
            token: Some(token),
            offset: 0,
            shape: vec![2],
            strides: vec![8],
        };
        let back = Handle::from_bytes(&h.to_bytes()).unwrap();
        assert_eq!(back.token, Some(token));
        assert_eq!(back, h);
    }
}
