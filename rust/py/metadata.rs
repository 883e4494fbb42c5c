//! Metadata: TOML text <-> Python objects.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::error::Error;

/// Parse TOML text into a Python dict.
pub fn toml_to_py<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| PyErr::from(Error::toml(&e)))?;
    value_to_py(py, &toml::Value::Table(table))
}

fn value_to_py<'py>(py: Python<'py>, v: &toml::Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        toml::Value::String(s) => PyString::new(py, s).into_any(),
        toml::Value::Integer(i) => i.into_pyobject(py)?.into_any(),
        toml::Value::Float(f) => PyFloat::new(py, *f).into_any(),
        toml::Value::Boolean(b) => PyBool::new(py, *b).to_owned().into_any(),
        toml::Value::Datetime(d) => datetime_to_py(py, d)?,
        toml::Value::Array(a) => {
            let items = a.iter().map(|x| value_to_py(py, x)).collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        toml::Value::Table(t) => {
            let d = PyDict::new(py);
            for (k, x) in t {
                d.set_item(k, value_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

/// Turn a Python mapping into TOML text.
pub fn py_to_toml(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let dict = obj
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("metadata must be a dict (or None)"))?;
    let table = dict_to_table(dict, 0)?;
    // parse-checked: what is written is what reads back (compared as text: NaN != NaN)
    let text = table_to_toml(&table);
    match text.parse::<toml::Table>() {
        Ok(back) if table_to_toml(&back) == text => Ok(text),
        Ok(_) => Err(PyValueError::new_err("metadata cannot be written as TOML: it does not read back the same")),
        Err(e) => Err(PyValueError::new_err(format!("metadata cannot be written as TOML: {e}"))),
    }
}

/// TOML text of `t` in the plainest forms, which older TOML readers (finalfusion-python's
/// `toml` 0.10) read the same: strings on one line with escapes (the `toml` crate writes
/// strings holding a newline as multi-line strings, which such readers misread), arrays
/// inline, sub-tables as `[a.b]` sections, arrays of tables as `[[a.b]]`.
pub fn table_to_toml(t: &toml::Table) -> String {
    let mut out = String::new();
    write_section(&mut out, &mut Vec::new(), t);
    out
}

fn is_table_array(v: &toml::Value) -> bool {
    matches!(v, toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table))
}

fn write_section(out: &mut String, path: &mut Vec<String>, t: &toml::Table) {
    for (k, v) in t {
        if !v.is_table() && !is_table_array(v) {
            out.push_str(&toml_key(k));
            out.push_str(" = ");
            write_value(out, v);
            out.push('\n');
        }
    }
    for (k, v) in t {
        if let toml::Value::Table(sub) = v {
            path.push(toml_key(k));
            out.push_str(&format!("\n[{}]\n", path.join(".")));
            write_section(out, path, sub);
            path.pop();
        }
    }
    for (k, v) in t {
        if let (true, toml::Value::Array(items)) = (is_table_array(v), v) {
            path.push(toml_key(k));
            for item in items {
                out.push_str(&format!("\n[[{}]]\n", path.join(".")));
                if let toml::Value::Table(sub) = item {
                    write_section(out, path, sub);
                }
            }
            path.pop();
        }
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        k.to_string()
    } else {
        toml_string(k)
    }
}

/// A basic (one-line) TOML string: quotes, backslashes and control characters escaped.
fn toml_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            '\u{8}' => o.push_str("\\b"),
            '\u{c}' => o.push_str("\\f"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn write_value(out: &mut String, v: &toml::Value) {
    match v {
        toml::Value::String(s) => out.push_str(&toml_string(s)),
        toml::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, x);
            }
            out.push(']');
        }
        toml::Value::Table(t) => {
            out.push('{');
            for (i, (k, x)) in t.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { " " });
                out.push_str(&toml_key(k));
                out.push_str(" = ");
                write_value(out, x);
            }
            out.push_str(if t.is_empty() { "}" } else { " }" });
        }
        // fractional seconds of at least six digits, as Python's isoformat writes them: the
        // crate trims `01:02:03.120000` to `01:02:03.12`, which the TOML 0.4 reader of
        // finalfusion-python reads as 01:02:03 for a local time
        toml::Value::Datetime(d) => out.push_str(&fraction_digits(&d.to_string(), 6, usize::MAX)),
        // integers, floats (inf, nan, a decimal point) and booleans: the crate's own syntax
        other => out.push_str(&other.to_string()),
    }
}

/// How deeply dicts and lists may nest in metadata. Deeper nesting (or a dict or list that
/// contains itself, which never ends) is refused before the recursion could overflow the
/// stack; TOML readers refuse such depths anyway.
const MAX_DEPTH: usize = 64;

fn too_deep() -> PyErr {
    PyValueError::new_err(format!(
        "metadata cannot be written as TOML: dicts and lists nest more than {MAX_DEPTH} levels deep \
         (or a dict or list contains itself)"
    ))
}

fn dict_to_table(d: &Bound<'_, PyDict>, depth: usize) -> PyResult<toml::Table> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let mut t = toml::Table::new();
    for (k, v) in d.iter() {
        let key: String = match k.cast::<PyString>() {
            Ok(s) => s.to_str().map(str::to_string).map_err(|_| {
                PyValueError::new_err(format!(
                    "metadata key {} cannot be stored: it is not valid Unicode (a lone surrogate)",
                    k.repr().map_or_else(|_| "?".to_string(), |r| r.to_string())
                ))
            })?,
            Err(_) => {
                return Err(PyTypeError::new_err(format!(
                    "metadata keys must be strings, got {} of type {}",
                    k.repr()?,
                    k.get_type().name()?
                )))
            }
        };
        let value = py_to_value(&v, depth + 1)?;
        // a table (or array of tables) is written as a `[a.""]` section, which TOML 0.4
        // readers (finalfusion-python's) refuse: "Can't have a keygroup with an empty name"
        if key.is_empty() && (value.is_table() || is_table_array(&value)) {
            return Err(PyValueError::new_err(
                "metadata key '' (the empty name) holds a table: TOML readers of finalfusion files \
                 (TOML 0.4) cannot read a table of an empty name; give it a name",
            ));
        }
        t.insert(key, value);
    }
    Ok(t)
}

/// A TOML date-time as Python's `datetime.datetime`, `datetime.date` or `datetime.time`
/// (what `tomllib` gives), so that `emb.metadata = emb.metadata` keeps it a date-time.
/// Falls back to the TOML text if Python cannot represent it (e.g. nanoseconds).
fn datetime_to_py<'py>(py: Python<'py>, d: &toml::value::Datetime) -> PyResult<Bound<'py, PyAny>> {
    let text = d.to_string();
    let class = match (d.date.is_some(), d.time.is_some()) {
        (true, true) => "datetime",
        (true, false) => "date",
        _ => "time",
    };
    // Python 3.10's fromisoformat does not know "Z"
    let iso = match text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
        Some(t) => format!("{t}+00:00"),
        None => text.clone(),
    };
    let parsed = py
        .import("datetime")
        .and_then(|m| m.getattr(class))
        // exactly six digits: what Python 3.10's `fromisoformat` takes (nanoseconds dropped)
        .and_then(|c| c.call_method1("fromisoformat", (fraction_digits(&iso.replace(' ', "T"), 6, 6),)));
    Ok(match parsed {
        Ok(v) => v,
        Err(_) => PyString::new(py, &text).into_any(),
    })
}

/// The fractional seconds of a date-time text padded with zeros to at least `min` digits and
/// cut to at most `max` (TOML allows any number of digits).
fn fraction_digits(iso: &str, min: usize, max: usize) -> String {
    let Some(dot) = iso.find('.') else {
        return iso.to_string();
    };
    let digits = iso[dot + 1..].bytes().take_while(u8::is_ascii_digit).count();
    let frac = &iso[dot + 1..dot + 1 + digits];
    let kept: String = frac.chars().chain(std::iter::repeat('0')).take(digits.clamp(min, max)).collect();
    format!("{}.{kept}{}", &iso[..dot], &iso[dot + 1 + digits..])
}

fn py_to_value(v: &Bound<'_, PyAny>, depth: usize) -> PyResult<toml::Value> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    // numpy scalars and arrays (np.float32(0.5), np.int64(3), np.array([1, 2])): as the
    // Python values they stand for
    if v.get_type().module().is_ok_and(|m| m.to_str().is_ok_and(|m| m == "numpy")) && v.hasattr("tolist")? {
        let plain = v.call_method0("tolist")?;
        if !plain.get_type().is(v.get_type()) {
            return py_to_value(&plain, depth);
        }
    }
    // datetime.datetime / date / time: TOML date-times
    let dt = v.py().import("datetime")?;
    if v.is_instance(&dt.getattr("date")?)? || v.is_instance(&dt.getattr("time")?)? {
        let iso: String = v.call_method0("isoformat")?.extract()?;
        if let Ok(d) = iso.parse::<toml::value::Datetime>() {
            return Ok(toml::Value::Datetime(d));
        }
    }
    if v.is_instance_of::<PyBool>() {
        return Ok(toml::Value::Boolean(v.extract()?));
    }
    if v.is_instance_of::<PyInt>() {
        let i: i64 = v
            .extract()
            .map_err(|_| PyValueError::new_err(format!("metadata integer {v} does not fit in 64 bits")))?;
        return Ok(toml::Value::Integer(i));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(toml::Value::Float(v.extract()?));
    }
    if let Ok(s) = v.cast::<PyString>() {
        let text = s.to_str().map_err(|_| {
            PyValueError::new_err(format!(
                "metadata value {} cannot be stored: it is not valid Unicode (a lone surrogate)",
                v.repr().map_or_else(|_| "?".to_string(), |r| r.to_string())
            ))
        })?;
        return Ok(toml::Value::String(text.to_string()));
    }
    if let Ok(d) = v.cast::<PyDict>() {
        return Ok(toml::Value::Table(dict_to_table(d, depth)?));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let items = v.try_iter()?.map(|x| py_to_value(&x?, depth + 1)).collect::<PyResult<Vec<_>>>()?;
        // One kind of value per array (arrays of arrays may differ inside): TOML 0.4 readers
        // such as finalfusion-python's refuse `[1, "x"]` or `[1, 2.5]` (the whole file fails
        // to open there) and drop the non-tables of `[{...}, 1]` silently.
        if let Some(other) = items.iter().find(|x| x.type_str() != items[0].type_str()) {
            return Err(PyValueError::new_err(format!(
                "metadata array {} mixes a {} and a {}: TOML readers of finalfusion files (TOML 0.4) \
                 need one kind of value per array (make them all strings or all floats, or use a table)",
                v.repr()?,
                items[0].type_str(),
                other.type_str()
            )));
        }
        return Ok(toml::Value::Array(items));
    }
    Err(PyTypeError::new_err(format!(
        "metadata value {} of type {} cannot be stored in TOML",
        v.repr()?,
        v.get_type().name()?
    )))
}
