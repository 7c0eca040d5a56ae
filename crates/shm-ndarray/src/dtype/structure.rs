//! A structured type's layout ([`StructLayout`]): fields, offsets, titles, nesting and
//! subarrays, and the text grammar (a JSON subset, module doc of `dtype`) every process and
//! language can parse.
//!
//! Invariants:
//! 1. Parsing any text gives a layout or a typed error, never a panic, unbounded recursion
//!    (at most `MAX_DEPTH` levels of structs and subarrays) or unbounded allocation (the text
//!    is at most [`MAX_DESCR_LEN`] bytes): the text is read from shared memory that another
//!    process of the pool wrote.
//! 2. A parsed layout's fields lie inside the item (offset plus the field's size at most the
//!    item size), names are unique and non-empty, and no field holds objects (`dtype`
//!    invariants 2 and 3).
//! 3. [`StructLayout::to_text`] writes what [`StructLayout::parse`] reads back as an equal
//!    layout.

use super::{DType, DTypeError, MAX_DESCR_LEN};

/// A structured type's layout: its fields and item size (module doc, invariant 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructLayout {
    /// The fields, in numpy's order.
    pub fields: Vec<Field>,
    /// Bytes per element (at least the end of every field; more with padding).
    pub itemsize: u64,
    /// Whether numpy built it with `align=True` (C struct alignment).
    pub aligned: bool,
}

/// One field of a [`StructLayout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's name (unique within its struct, never empty).
    pub name: String,
    /// numpy's title of the field (another name for it), if it has one.
    pub title: Option<String>,
    /// Bytes from the element's start.
    pub offset: u64,
    /// What the field holds.
    pub format: Format,
}

/// What a field holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// A simple type (`<f8`, `|S4`, ...).
    Simple(DType),
    /// A nested structured type.
    Struct(StructLayout),
    /// A fixed-shape subarray of `base` (numpy's `(base, shape)`).
    Subarray {
        /// The element of the subarray.
        base: Box<Format>,
        /// Its shape: 1 to 64 extents (`MAX_DIMS`).
        shape: Vec<u64>,
    },
}

/// Deepest nesting of structs and subarrays a description may have: far beyond any real
/// record, and it bounds the parser's recursion (a description is read from shared memory).
const MAX_DEPTH: usize = 64;
// The error messages name both limits in words.
const _: () = assert!(MAX_DEPTH == 64 && crate::MAX_DIMS == 64, "update the limits the errors name");

impl Format {
    /// Bytes one value of this format takes.
    pub fn itemsize(&self) -> u64 {
        match self {
            Format::Simple(d) => d.itemsize(),
            Format::Struct(s) => s.itemsize,
            // Checked not to overflow when parsed.
            Format::Subarray { base, shape } => shape.iter().fold(base.itemsize(), |acc, n| acc.saturating_mul(*n)),
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Format::Simple(d) => write_string(out, d.descr()),
            Format::Struct(s) => s.write(out),
            Format::Subarray { base, shape } => {
                out.push_str("{\"base\":");
                base.write(out);
                out.push_str(",\"shape\":[");
                for (i, n) in shape.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&n.to_string());
                }
                out.push_str("]}");
            }
        }
    }

    fn from_value(v: Value, depth: usize) -> Result<Self, &'static str> {
        if depth > MAX_DEPTH {
            return Err("nested deeper than 64 levels");
        }
        match v {
            Value::Str(d) => {
                if d.starts_with('[') || d.starts_with('{') {
                    return Err("a field's simple format is a dtype.str");
                }
                if d.as_bytes().get(1) == Some(&b'O') {
                    return Err("a field holds Python objects");
                }
                let itemsize = simple_itemsize(&d).ok_or("a field's format is not a numpy dtype.str")?;
                DType::new(&d, itemsize).map(Format::Simple).map_err(|e| match e {
                    DTypeError::Object { .. } => "a field holds Python objects",
                    _ => "a field's format is not a numpy dtype.str",
                })
            }
            Value::Object(mut o) => {
                if let Some(base) = take(&mut o, "base") {
                    let shape = take(&mut o, "shape").ok_or("a subarray needs a shape")?;
                    if !o.is_empty() {
                        return Err("unknown key in a subarray");
                    }
                    let Value::Array(dims) = shape else { return Err("a subarray's shape is a list") };
                    let shape = dims.into_iter().map(uint).collect::<Result<Vec<_>, _>>()?;
                    if shape.is_empty() || shape.len() > crate::MAX_DIMS {
                        return Err("a subarray has 1 to 64 dimensions");
                    }
                    let base = Format::from_value(base, depth + 1)?;
                    shape
                        .iter()
                        .try_fold(base.itemsize(), |acc, n| acc.checked_mul(*n))
                        .ok_or("a subarray's size overflows")?;
                    Ok(Format::Subarray { base: Box::new(base), shape })
                } else {
                    StructLayout::from_object(o, depth + 1).map(Format::Struct)
                }
            }
            _ => Err("a format is a string or an object"),
        }
    }
}

/// The item size a simple description implies (numpy's `U` counts 4 bytes a character).
fn simple_itemsize(d: &str) -> Option<u64> {
    let code = *d.as_bytes().get(1)?;
    let rest = d.get(2..)?;
    let count: u64 = rest.split('[').next()?.parse().ok()?;
    Some(if code == b'U' { count.checked_mul(4)? } else { count })
}

impl StructLayout {
    /// Reads a structured description written in the module doc's grammar, checking it: every
    /// field has a unique, non-empty name, a valid format without objects, and lies inside the
    /// item size.
    ///
    /// # Errors
    ///
    /// [`DTypeError::Object`] for a field holding Python objects, [`DTypeError::Unrecognised`]
    /// for anything else that is not a valid layout.
    pub fn parse(text: &str) -> Result<Self, DTypeError> {
        let fail = |why| match why {
            "a field holds Python objects" => DTypeError::Object { descr: text.to_owned() },
            why => DTypeError::Unrecognised { descr: text.to_owned(), why },
        };
        if text.len() > MAX_DESCR_LEN {
            return Err(fail("longer than MAX_DESCR_LEN bytes"));
        }
        let mut p = Parser { bytes: text.as_bytes(), at: 0 };
        let v = p.value(0).map_err(fail)?;
        p.ws();
        if p.at != p.bytes.len() {
            return Err(fail("text after the description"));
        }
        let Value::Object(o) = v else { return Err(fail("a structured description is an object")) };
        Self::from_object(o, 0).map_err(fail)
    }

    /// The description in the module doc's grammar (what [`StructLayout::parse`] reads).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        out.push_str("{\"itemsize\":");
        out.push_str(&self.itemsize.to_string());
        if self.aligned {
            out.push_str(",\"aligned\":true");
        }
        out.push_str(",\"fields\":[");
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"name\":");
            write_string(out, &f.name);
            out.push_str(",\"offset\":");
            out.push_str(&f.offset.to_string());
            out.push_str(",\"format\":");
            f.format.write(out);
            if let Some(t) = &f.title {
                out.push_str(",\"title\":");
                write_string(out, t);
            }
            out.push('}');
        }
        out.push_str("]}");
    }

    fn from_object(mut o: Vec<(String, Value)>, depth: usize) -> Result<Self, &'static str> {
        if depth > MAX_DEPTH {
            return Err("nested deeper than 64 levels");
        }
        let itemsize = uint(take(&mut o, "itemsize").ok_or("a struct needs an itemsize")?)?;
        let aligned = match take(&mut o, "aligned") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err("aligned is true or false"),
        };
        let Some(Value::Array(values)) = take(&mut o, "fields") else { return Err("a struct needs a fields list") };
        if !o.is_empty() {
            return Err("unknown key in a struct");
        }
        let mut fields: Vec<Field> = Vec::with_capacity(values.len());
        for v in values {
            let Value::Object(mut f) = v else { return Err("a field is an object") };
            let Some(Value::Str(name)) = take(&mut f, "name") else { return Err("a field needs a string name") };
            let offset = uint(take(&mut f, "offset").ok_or("a field needs an offset")?)?;
            let format = Format::from_value(take(&mut f, "format").ok_or("a field needs a format")?, depth)?;
            let title = match take(&mut f, "title") {
                None | Some(Value::Null) => None,
                Some(Value::Str(t)) => Some(t),
                Some(_) => return Err("a field's title is a string"),
            };
            if !f.is_empty() {
                return Err("unknown key in a field");
            }
            if name.is_empty() {
                return Err("a field's name is empty");
            }
            let end = offset.checked_add(format.itemsize()).ok_or("a field's end overflows")?;
            if end > itemsize {
                return Err("a field lies outside the item");
            }
            let clash = |n: &str| fields.iter().any(|g| g.name == n || g.title.as_deref() == Some(n));
            if clash(&name) || title.as_deref().is_some_and(|t| t == name || clash(t)) {
                return Err("two fields share a name or title");
            }
            fields.push(Field { name, title, offset, format });
        }
        Ok(Self { fields, itemsize, aligned })
    }
}

/// A value of the JSON subset the grammar uses (no fractions, no negative numbers).
enum Value {
    Null,
    Bool(bool),
    UInt(u64),
    Str(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

/// Removes and returns the value of `key` (the first, if repeated keys were written).
fn take(o: &mut Vec<(String, Value)>, key: &str) -> Option<Value> {
    let i = o.iter().position(|(k, _)| k == key)?;
    Some(o.remove(i).1)
}

fn uint(v: Value) -> Result<u64, &'static str> {
    match v {
        Value::UInt(n) => Ok(n),
        _ => Err("expected a non-negative integer"),
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A recursive-descent reader of the JSON subset; nesting is bounded by its callers' depth.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.bytes.get(self.at).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        let hit = self.bytes.get(self.at) == Some(&b);
        self.at += usize::from(hit);
        hit
    }

    fn value(&mut self, depth: usize) -> Result<Value, &'static str> {
        // Each struct level takes up to three JSON levels (struct, fields list, field).
        if depth > 4 * MAX_DEPTH {
            return Err("nested deeper than 64 levels");
        }
        self.ws();
        match self.bytes.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut o = Vec::new();
                if self.eat(b'}') {
                    return Ok(Value::Object(o));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return Err("expected ':' after a key");
                    }
                    o.push((key, self.value(depth + 1)?));
                    if self.eat(b'}') {
                        return Ok(Value::Object(o));
                    }
                    if !self.eat(b',') {
                        return Err("expected ',' or '}'");
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut a = Vec::new();
                if self.eat(b']') {
                    return Ok(Value::Array(a));
                }
                loop {
                    a.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Ok(Value::Array(a));
                    }
                    if !self.eat(b',') {
                        return Err("expected ',' or ']'");
                    }
                }
            }
            Some(b'"') => self.string().map(Value::Str),
            Some(b'0'..=b'9') => {
                let start = self.at;
                while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                    self.at += 1;
                }
                let digits = core::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| "bad number")?;
                if digits.len() > 1 && digits.starts_with('0') {
                    return Err("a number with a leading zero");
                }
                digits.parse().map(Value::UInt).map_err(|_| "a number too large")
            }
            _ => {
                for (word, v) in [("true", Value::Bool(true)), ("false", Value::Bool(false)), ("null", Value::Null)] {
                    if self.bytes[self.at..].starts_with(word.as_bytes()) {
                        self.at += word.len();
                        return Ok(v);
                    }
                }
                Err("expected a value")
            }
        }
    }

    fn string(&mut self) -> Result<String, &'static str> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return Err("expected a string");
        }
        self.at += 1;
        let mut out = String::new();
        loop {
            let start = self.at;
            while self.bytes.get(self.at).is_some_and(|b| *b != b'"' && *b != b'\\' && *b >= 0x20) {
                self.at += 1;
            }
            // The input is a `str` and the run stops at ASCII bytes: a char boundary.
            out.push_str(core::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| "bad UTF-8")?);
            match self.bytes.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let esc = *self.bytes.get(self.at + 1).ok_or("unfinished escape")?;
                    self.at += 2;
                    out.push(match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.bytes[self.at..].starts_with(b"\\u") {
                                    return Err("a lone surrogate");
                                }
                                self.at += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err("a lone surrogate");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or("a lone surrogate")?
                        }
                        _ => return Err("unknown escape"),
                    });
                }
                _ => return Err("unfinished string or control character"),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, &'static str> {
        let digits = self.bytes.get(self.at..self.at + 4).ok_or("short \\u escape")?;
        let text = core::str::from_utf8(digits).map_err(|_| "bad \\u escape")?;
        let v = u32::from_str_radix(text, 16).map_err(|_| "bad \\u escape")?;
        self.at += 4;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DTypeKind;

    fn simple(d: &str, size: u64) -> Format {
        Format::Simple(DType::new(d, size).unwrap())
    }

    #[test]
    fn structured_layouts_round_trip_through_their_text() {
        let inner = StructLayout {
            fields: vec![
                Field { name: "a".into(), title: None, offset: 0, format: simple("|u1", 1) },
                Field { name: "b".into(), title: None, offset: 4, format: simple("<f4", 4) },
            ],
            itemsize: 8,
            aligned: true,
        };
        let outer = StructLayout {
            fields: vec![
                Field {
                    name: "x\"y\\\u{1}é😀".into(),
                    title: Some("a title".into()),
                    offset: 0,
                    format: simple("<M8[ns]", 8),
                },
                Field { name: "s".into(), title: None, offset: 8, format: Format::Struct(inner) },
                Field {
                    name: "m".into(),
                    title: None,
                    offset: 16,
                    format: Format::Subarray { base: Box::new(simple(">i2", 2)), shape: vec![2, 3] },
                },
            ],
            itemsize: 32,
            aligned: false,
        };
        let text = outer.to_text();
        assert_eq!(StructLayout::parse(&text).unwrap(), outer);
        let t = DType::new(&text, 32).unwrap();
        assert_eq!((t.kind(), t.structure()), (DTypeKind::Void, Some(outer)));
        assert_eq!(Format::Subarray { base: Box::new(simple("<f8", 8)), shape: vec![2, 3] }.itemsize(), 48);
        // Whitespace, key order and escapes as any JSON writer may produce them.
        let loose = r#" { "fields" : [ { "format" : "<f8" , "offset" : 0 , "name" : "\u00e9\ud83d\ude00" } ] , "itemsize" : 8 } "#;
        let l = StructLayout::parse(loose).unwrap();
        assert_eq!(l.fields[0].name, "é😀");
        // Legacy descriptions stay readable, without a structure.
        assert_eq!(DType::new("[('x', '<f8')]", 8).unwrap().structure(), None);
        assert_eq!(DType::new("<f8", 8).unwrap().structure(), None);
    }

    #[test]
    fn invalid_structured_layouts_are_refused_with_typed_errors() {
        let field = |f: &str| format!(r#"{{"itemsize":8,"fields":[{f}]}}"#);
        let unrecognised = [
            field(r#"{"name":"x","offset":4,"format":"<f8"}"#), // outside the item
            field(r#"{"name":"x","offset":0,"format":"<f4"},{"name":"x","offset":4,"format":"<f4"}"#), // twice
            field(r#"{"name":"x","title":"y","offset":0,"format":"<f4"},{"name":"y","offset":4,"format":"<f4"}"#),
            field(r#"{"name":"","offset":0,"format":"<f8"}"#), // empty name
            field(r#"{"name":"x","offset":0,"format":"f8"}"#), // not a dtype.str
            field(r#"{"name":"x","offset":0,"format":"<f8","extra":1}"#),
            field(r#"{"name":"x","offset":-1,"format":"<f8"}"#),
            field(r#"{"name":"x","offset":0,"format":{"base":"<f4","shape":[]}}"#),
            field(r#"{"name":"x","offset":0,"format":{"base":"<f4","shape":[4294967296,4294967296]}}"#),
            field(r#"{"name":"x","offset":0,"format":"[('a', '<f8')]"}"#),
            r#"{"itemsize":8,"fields":[]"#.to_owned(),    // unfinished
            r#"{"itemsize":8,"fields":[]} x"#.to_owned(), // trailing text
            r#"{"itemsize":8,"fields":[],"zzz":1}"#.to_owned(),
            r#"{"itemsize":08,"fields":[]}"#.to_owned(),
            r#"{"itemsize":8,"fields":[{"name":"\ud800","offset":0,"format":"<f8"}]}"#.to_owned(),
            format!("{}{}", r#"{"itemsize":8,"fields":[{"name":"a","offset":0,"format":"#.repeat(20), "}".repeat(20)),
        ];
        for text in unrecognised {
            assert!(matches!(DType::new(&text, 8), Err(DTypeError::Unrecognised { .. })), "{text}");
        }
        let object = field(r#"{"name":"x","offset":0,"format":"|O"}"#);
        assert!(matches!(DType::new(&object, 8), Err(DTypeError::Object { .. })));
        let nested = field(r#"{"name":"x","offset":0,"format":{"base":"|O","shape":[1]}}"#);
        assert!(matches!(DType::new(&nested, 8), Err(DTypeError::Object { .. })));
        let ok = field(r#"{"name":"x","offset":0,"format":"<f8"}"#);
        assert!(matches!(DType::new(&ok, 16), Err(DTypeError::ItemSize { .. })));
        assert!(DType::new(&ok, 8).is_ok());
    }
}
