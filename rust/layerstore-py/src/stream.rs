//! A `std::io::Read` over a Python binary stream (`.read(n)`) or an iterable of bytes, so the
//! core can consume Python data with the GIL released between chunks.

use std::io;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

const READ_SIZE: usize = 1 << 20;

pub struct PyReader {
    source: Py<PyAny>,
    /// True when `source` has `.read(n)`; otherwise it is an iterator of bytes-like chunks.
    readable: bool,
    pending: Vec<u8>,
    position: usize,
    /// The Python exception that ended the stream, re-raised by the caller after the put.
    error: Arc<Mutex<Option<PyErr>>>,
}

impl PyReader {
    pub fn new(stream: &Bound<'_, PyAny>) -> PyResult<PyReader> {
        let readable = stream.hasattr("read")?;
        let source =
            if readable {
                stream.clone().unbind()
            } else {
                stream
                    .try_iter()
                    .map_err(|_| {
                        PyTypeError::new_err(format!(
                        "put_stream expects a binary file object or an iterable of bytes, got {}",
                        stream.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string())
                    ))
                    })?
                    .into_any()
                    .unbind()
            };
        Ok(PyReader {
            source,
            readable,
            pending: Vec::new(),
            position: 0,
            error: Arc::new(Mutex::new(None)),
        })
    }

    pub fn error_slot(&self) -> Arc<Mutex<Option<PyErr>>> {
        Arc::clone(&self.error)
    }

    /// Fetches the next chunk from Python; an empty chunk means the end of the stream.
    fn next_chunk(&self) -> PyResult<Vec<u8>> {
        Python::attach(|py| {
            let source = self.source.bind(py);
            let chunk = if self.readable {
                source.call_method1("read", (READ_SIZE,))?
            } else {
                match source.call_method0("__next__") {
                    Ok(chunk) => chunk,
                    Err(error) if error.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => {
                        return Ok(Vec::new());
                    }
                    Err(error) => return Err(error),
                }
            };
            if chunk.is_none() {
                if self.readable {
                    // Non-blocking streams return None for "no data yet", not for the end.
                    return Err(PyTypeError::new_err(
                        "the stream's read() returned None, as non-blocking streams do; \
                         pass a blocking binary file object",
                    ));
                }
                return Ok(Vec::new());
            }
            let bytes: Vec<u8> = chunk.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "put_stream expects bytes chunks, got {}",
                    chunk
                        .get_type()
                        .name()
                        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
                ))
            })?;
            // An iterator may yield an empty chunk in the middle; only `read` uses it as the end.
            if bytes.is_empty() && !self.readable {
                return self.next_chunk();
            }
            Ok(bytes)
        })
    }
}

impl io::Read for PyReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.position == self.pending.len() {
            match self.next_chunk() {
                Ok(chunk) => {
                    self.pending = chunk;
                    self.position = 0;
                }
                Err(error) => {
                    let message = error.to_string();
                    *self.error.lock().expect("not poisoned") = Some(error);
                    return Err(io::Error::other(message));
                }
            }
        }
        let count = buffer.len().min(self.pending.len() - self.position);
        buffer[..count].copy_from_slice(&self.pending[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}
