//! Element types as numpy describes them, kept as text every process can parse.
//!
//! Invariants:
//! 1. A [`DType`] round-trips: the description string and item size given at creation are the
//!    ones a receiver gets back, so every process rebuilds exactly the same `numpy.dtype`.
//! 2. Nothing that holds pointers is accepted: object (`O`) fields are refused wherever they
//!    appear, because a pointer means nothing in another process.
//! 3. A description is checked in full before it is kept: a structured one is parsed here
//!    (field names, formats, offsets and item size), so a reader in any language gets a layout
//!    whose fields lie inside the item.
//!
//! Descriptions are numpy's `dtype.str` for simple types (`<f8`, `|b1`, `<M8[ns]`, `<U10`,
//! `|S4`). A structured type is described by [`StructLayout`]'s text, a small JSON document in
//! the shape of the dict `numpy.dtype` takes (grammar below), which [`StructLayout::parse`] reads
//! and [`StructLayout::to_text`] writes:
//!
//! ```text
//! struct   = '{"itemsize":' uint [',"aligned":true'] ',"fields":[' [field *(',' field)] ']}'
//! field    = '{"name":' string ',"offset":' uint ',"format":' format [',"title":' string] '}'
//! format   = string                                   ; a simple description: "<f8"
//!          / struct                                   ; a nested structured type
//!          / '{"base":' format ',"shape":[' uint *(',' uint) ']}'   ; a subarray
//! ```
//!
//! `string` and `uint` are JSON's (escapes included); whitespace between tokens is allowed
//! when reading, and keys may come in any order. Headers written before this form kept numpy's
//! `repr` of the `descr` list (`[('x', '<f8')]`) or of the dict (`{'names': ...}`): such a
//! *legacy* description is still accepted (after the object check) and kept as it is, for
//! readers that can evaluate it (Python); [`DType::structure`] gives `None` for it.
//!
//! ```
//! use shm_ndarray::{DType, Format, StructLayout};
//!
//! let t = DType::new(r#"{"itemsize":12,"fields":[{"name":"x","offset":0,"format":"<f8"},{"name":"n","offset":8,"format":"<i4"}]}"#, 12)?;
//! let layout: StructLayout = t.structure().expect("a structured type");
//! assert_eq!(layout.fields[1].name, "n");
//! assert!(matches!(&layout.fields[1].format, Format::Simple(d) if d.descr() == "<i4"));
//! assert_eq!(DType::new(&layout.to_text(), 12)?, t);
//! # Ok::<(), shm_ndarray::DTypeError>(())
//! ```

mod structure;

pub use structure::{Field, Format, StructLayout};

/// Most bytes a description may take: what the header's 16-bit length field can say. A
/// structured description takes about 42 bytes a field, so this admits about 1,500 fields
/// (numpy's `repr` of the `descr` list, kept before [`StructLayout`], took about 16 under a
/// 4000-byte limit: a review found 150-field records refused after the change).
pub const MAX_DESCR_LEN: usize = u16::MAX as usize;

/// What kind of element a [`DType`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DTypeKind {
    /// `?`
    Bool = 1,
    /// `i`
    Int = 2,
    /// `u`
    UInt = 3,
    /// `f` (half, single, double, long double)
    Float = 4,
    /// `c`
    Complex = 5,
    /// `M`
    DateTime = 6,
    /// `m`
    TimeDelta = 7,
    /// `S`
    Bytes = 8,
    /// `U`
    Unicode = 9,
    /// `V`: raw bytes, or a structured type described by its field list.
    Void = 10,
}

impl DTypeKind {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Bool,
            2 => Self::Int,
            3 => Self::UInt,
            4 => Self::Float,
            5 => Self::Complex,
            6 => Self::DateTime,
            7 => Self::TimeDelta,
            8 => Self::Bytes,
            9 => Self::Unicode,
            10 => Self::Void,
            _ => return None,
        })
    }
}

/// An element type: numpy's description, its kind and its size in bytes.
///
/// # Examples
///
/// ```
/// use shm_ndarray::{DType, DTypeKind};
///
/// let t = DType::new("<M8[ns]", 8).unwrap();
/// assert_eq!(t.kind(), DTypeKind::DateTime);
/// assert!(DType::new("|O", 8).is_err(), "objects cannot be shared by bytes");
/// assert_eq!(DType::of::<f64>(), DType::new("<f8", 8).unwrap());
/// ```
#[derive(Clone, Debug)]
pub struct DType {
    descr: Descr,
    itemsize: u64,
    kind: DTypeKind,
}

/// A description: the common ones are static strings (no allocation, no reference count to
/// touch when an array is made or dropped), the rest shared.
#[derive(Clone, Debug)]
enum Descr {
    Static(&'static str),
    Shared(std::sync::Arc<str>),
}

impl Descr {
    fn of(descr: &str) -> Self {
        match COMMON.iter().find(|c| **c == descr) {
            Some(c) => Descr::Static(c),
            None => Descr::Shared(descr.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Descr::Static(s) => s,
            Descr::Shared(s) => s,
        }
    }
}

/// Descriptions kept as static strings: numpy's numeric types in either byte order.
const COMMON: &[&str] = &[
    "|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8", "<c8", "<c16", ">i2", ">u2",
    ">i4", ">u4", ">i8", ">u8", ">f2", ">f4", ">f8", ">c8", ">c16",
];

impl PartialEq for DType {
    fn eq(&self, other: &Self) -> bool {
        self.descr.as_str() == other.descr.as_str() && self.itemsize == other.itemsize && self.kind == other.kind
    }
}

impl Eq for DType {}

impl core::hash::Hash for DType {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.descr.as_str().hash(state);
        self.itemsize.hash(state);
        self.kind.hash(state);
    }
}

/// Why a description was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DTypeError {
    /// The type holds Python objects (pointers).
    #[error("dtype {descr:?} holds Python objects, which cannot live in shared memory; convert to a numeric, string or structured dtype")]
    Object {
        /// The description.
        descr: String,
    },
    /// The description is not one numpy writes.
    #[error("unrecognised dtype description {descr:?}: {why}")]
    Unrecognised {
        /// The description.
        descr: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The item size does not fit the description.
    #[error("dtype {descr:?} cannot have an item size of {itemsize} bytes")]
    ItemSize {
        /// The description.
        descr: String,
        /// The size given.
        itemsize: u64,
    },
}

impl DType {
    /// Checks and keeps a numpy description with its item size (invariants 1 and 2).
    ///
    /// # Errors
    ///
    /// [`DTypeError`] for object types, unknown descriptions and impossible sizes.
    pub fn new(descr: &str, itemsize: u64) -> Result<Self, DTypeError> {
        let unrecognised = |why| DTypeError::Unrecognised { descr: descr.to_owned(), why };
        if descr.is_empty() || descr.len() > MAX_DESCR_LEN {
            return Err(unrecognised("empty or longer than MAX_DESCR_LEN bytes"));
        }
        if descr.starts_with("{\"") {
            // A structured type in this module's grammar: parsed and checked in full (inv. 3).
            let layout = StructLayout::parse(descr)?;
            if layout.itemsize != itemsize {
                return Err(DTypeError::ItemSize { descr: descr.to_owned(), itemsize });
            }
            return Ok(Self { descr: Descr::Shared(descr.into()), itemsize, kind: DTypeKind::Void });
        }
        if descr.starts_with('[') || descr.starts_with('{') {
            // A legacy structured type (see the module doc): numpy's descr list or dict, as
            // Python's repr. Refuse object fields anywhere in it.
            if descr.contains("'|O'") || descr.contains("\"|O\"") || descr.contains("'O'") || descr.contains("<O") {
                return Err(DTypeError::Object { descr: descr.to_owned() });
            }
            if itemsize == 0 {
                return Err(DTypeError::ItemSize { descr: descr.to_owned(), itemsize });
            }
            return Ok(Self { descr: Descr::Shared(descr.into()), itemsize, kind: DTypeKind::Void });
        }
        let bytes = descr.as_bytes();
        let (order, code) = match bytes {
            [o @ (b'<' | b'>' | b'|' | b'='), c, ..] => (*o, *c),
            _ => return Err(unrecognised("expected a byte-order character then a type code")),
        };
        let _ = order;
        if code == b'O' {
            return Err(DTypeError::Object { descr: descr.to_owned() });
        }
        // The type code may be the first byte of a multi-byte character (text from shared memory).
        let rest = descr.get(2..).ok_or_else(|| unrecognised("unknown type code"))?;
        let (size_text, unit) = match rest.find('[') {
            Some(i) if rest.ends_with(']') => (&rest[..i], Some(&rest[i + 1..rest.len() - 1])),
            Some(_) => return Err(unrecognised("unbalanced unit brackets")),
            None => (rest, None),
        };
        let count: u64 = size_text.parse().map_err(|_| unrecognised("expected a size after the type code"))?;
        let kind = kind_of_code(code).ok_or_else(|| unrecognised("unknown type code"))?;
        if unit.is_some() != matches!(kind, DTypeKind::DateTime | DTypeKind::TimeDelta) {
            return Err(unrecognised("a [unit] belongs to datetime64 and timedelta64 only"));
        }
        let expected = match kind {
            DTypeKind::Unicode => {
                count.checked_mul(4).ok_or(DTypeError::ItemSize { descr: descr.to_owned(), itemsize })?
            }
            _ => count,
        };
        let size_ok = match kind {
            DTypeKind::Bool => expected == 1,
            DTypeKind::Int | DTypeKind::UInt => matches!(expected, 1 | 2 | 4 | 8),
            DTypeKind::Float => matches!(expected, 2 | 4 | 8 | 12 | 16),
            DTypeKind::Complex => matches!(expected, 8 | 16 | 24 | 32),
            DTypeKind::DateTime | DTypeKind::TimeDelta => expected == 8,
            DTypeKind::Bytes | DTypeKind::Unicode | DTypeKind::Void => true,
        };
        if !size_ok || expected != itemsize {
            return Err(DTypeError::ItemSize { descr: descr.to_owned(), itemsize });
        }
        Ok(Self { descr: Descr::of(descr), itemsize, kind })
    }

    /// The dtype of a Rust element type (no allocation).
    pub fn of<T: Element>() -> Self {
        // `Element`'s contract: DESCR is numpy's description of T, a byte order and a code.
        let kind = T::DESCR.as_bytes().get(1).and_then(|c| kind_of_code(*c)).expect("Element descriptions are valid");
        Self { descr: Descr::Static(T::DESCR), itemsize: core::mem::size_of::<T>() as u64, kind }
    }

    /// numpy's description.
    pub fn descr(&self) -> &str {
        self.descr.as_str()
    }

    /// Bytes per element.
    pub fn itemsize(&self) -> u64 {
        self.itemsize
    }

    /// The kind.
    pub fn kind(&self) -> DTypeKind {
        self.kind
    }

    /// The fields of a structured type; `None` for a simple type or a legacy description (see
    /// the module doc).
    pub fn structure(&self) -> Option<StructLayout> {
        let d = self.descr.as_str();
        // Checked by `new` (invariant 3): parsing again cannot fail.
        d.starts_with("{\"").then(|| StructLayout::parse(d).ok()).flatten()
    }

    /// Whether `T` has exactly this layout.
    pub fn is<T: Element>(&self) -> bool {
        self.descr.as_str() == T::DESCR && self.itemsize == core::mem::size_of::<T>() as u64
    }
}

/// The kind a numpy type code (the character after the byte order) names.
fn kind_of_code(code: u8) -> Option<DTypeKind> {
    Some(match code {
        b'b' => DTypeKind::Bool,
        b'i' => DTypeKind::Int,
        b'u' => DTypeKind::UInt,
        b'f' => DTypeKind::Float,
        b'c' => DTypeKind::Complex,
        b'M' => DTypeKind::DateTime,
        b'm' => DTypeKind::TimeDelta,
        b'S' => DTypeKind::Bytes,
        b'U' => DTypeKind::Unicode,
        b'V' => DTypeKind::Void,
        _ => return None,
    })
}

/// A Rust type that is an array element, plain data with a numpy description.
///
/// # Safety
///
/// - every bit pattern of `size_of::<Self>()` bytes is a valid `Self` (other processes write
///   the bytes);
/// - `DESCR` is numpy's `dtype.str` of exactly this layout on this machine.
pub unsafe trait Element: Copy + Send + Sync + 'static {
    /// numpy's `dtype.str`.
    const DESCR: &'static str;
}

macro_rules! element {
    ($($t:ty => $le:literal, $be:literal;)*) => {$(
        // SAFETY: a plain integer or float: every bit pattern is valid, and the description is
        // numpy's for this size in this machine's byte order.
        unsafe impl Element for $t {
            const DESCR: &'static str = if cfg!(target_endian = "little") { $le } else { $be };
        }
    )*};
}

element! {
    i8 => "|i1", "|i1";
    u8 => "|u1", "|u1";
    i16 => "<i2", ">i2";
    u16 => "<u2", ">u2";
    i32 => "<i4", ">i4";
    u32 => "<u4", ">u4";
    i64 => "<i8", ">i8";
    u64 => "<u8", ">u8";
    f32 => "<f4", ">f4";
    f64 => "<f8", ">f8";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_descriptions_are_accepted_with_their_sizes() {
        for (d, size, kind) in [
            ("|b1", 1, DTypeKind::Bool),
            ("|i1", 1, DTypeKind::Int),
            ("<u8", 8, DTypeKind::UInt),
            ("<f2", 2, DTypeKind::Float),
            ("<f16", 16, DTypeKind::Float),
            ("<c16", 16, DTypeKind::Complex),
            ("<M8[ns]", 8, DTypeKind::DateTime),
            ("<m8[D]", 8, DTypeKind::TimeDelta),
            ("|S7", 7, DTypeKind::Bytes),
            ("<U3", 12, DTypeKind::Unicode),
            ("|V16", 16, DTypeKind::Void),
            ("[('x', '<f8'), ('n', '<i4')]", 12, DTypeKind::Void),
            (
                r#"{"itemsize":12,"fields":[{"name":"x","offset":0,"format":"<f8"},{"name":"n","offset":8,"format":"<i4"}]}"#,
                12,
                DTypeKind::Void,
            ),
        ] {
            let t = DType::new(d, size).unwrap_or_else(|e| panic!("{d}: {e}"));
            assert_eq!((t.descr(), t.itemsize(), t.kind()), (d, size, kind));
        }
    }

    #[test]
    fn objects_and_nonsense_are_refused() {
        assert!(matches!(DType::new("|O", 8), Err(DTypeError::Object { .. })));
        assert!(matches!(DType::new("[('a', '|O')]", 8), Err(DTypeError::Object { .. })));
        assert!(matches!(DType::new("<f8", 4), Err(DTypeError::ItemSize { .. })));
        assert!(matches!(DType::new("<f3", 3), Err(DTypeError::ItemSize { .. })));
        assert!(matches!(DType::new("<U3", 3), Err(DTypeError::ItemSize { .. })));
        assert!(matches!(DType::new("<M8", 8), Err(DTypeError::Unrecognised { .. })));
        assert!(matches!(DType::new("<f8[s]", 8), Err(DTypeError::Unrecognised { .. })));
        assert!(matches!(DType::new("f8", 8), Err(DTypeError::Unrecognised { .. })));
        assert!(matches!(DType::new("", 8), Err(DTypeError::Unrecognised { .. })));
        assert!(DType::of::<i32>().is::<i32>() && !DType::of::<i32>().is::<u32>());
    }

    #[test]
    fn element_types_match_their_parsed_descriptions() {
        fn same<T: Element>() {
            let parsed = DType::new(T::DESCR, core::mem::size_of::<T>() as u64).unwrap();
            let of = DType::of::<T>();
            assert_eq!((of.descr(), of.itemsize(), of.kind()), (parsed.descr(), parsed.itemsize(), parsed.kind()));
            assert_eq!(of, parsed);
            let hash = |t: &DType| {
                use core::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                t.hash(&mut h);
                h.finish()
            };
            assert_eq!(hash(&of), hash(&parsed));
        }
        same::<i8>();
        same::<u8>();
        same::<i16>();
        same::<u16>();
        same::<i32>();
        same::<u32>();
        same::<i64>();
        same::<u64>();
        same::<f32>();
        same::<f64>();
        // A static description and a shared one of the same text are equal.
        let shared = DType::new("<M8[ns]", 8).unwrap();
        assert_eq!(shared, DType::new("<M8[ns]", 8).unwrap());
        assert_ne!(shared, DType::new("<m8[ns]", 8).unwrap());
    }
}
