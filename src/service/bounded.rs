//! Quoting untrusted input in error messages and logs: at most a bounded prefix of it, so
//! that a hostile request cannot make a huge status header (which stock gRPC clients refuse
//! to read, seeing RESOURCE_EXHAUSTED instead of the real error) or a huge log line.

/// Longest status message the server sends (bytes); longer ones are cut at a char boundary.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Characters of a user string quoted in a message.
const QUOTED_CHARS: usize = 64;
/// Dimensions of a user shape quoted in a message.
const QUOTED_DIMS: usize = 8;

/// `s` in quotes (Debug-escaped), cut after [`QUOTED_CHARS`] characters with its full length.
pub fn quoted(s: &str) -> String {
    let count = s.chars().count();
    if count <= QUOTED_CHARS {
        return format!("{s:?}");
    }
    let prefix: String = s.chars().take(QUOTED_CHARS).collect();
    format!("{prefix:?}... ({count} characters)")
}

/// A shape as `[a, b, c]`, cut after [`QUOTED_DIMS`] dimensions with the full count.
pub fn shape(dims: &[i64]) -> String {
    if dims.len() <= QUOTED_DIMS {
        return format!("{dims:?}");
    }
    let head: Vec<String> = dims[..QUOTED_DIMS].iter().map(i64::to_string).collect();
    format!("[{}, ...] ({} dimensions)", head.join(", "), dims.len())
}

/// `message` cut to [`MAX_MESSAGE_BYTES`] (the last line of defence for every status).
pub fn message(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.into();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (message cut at {MAX_MESSAGE_BYTES} bytes)", &message[..end]).into()
}

/// `status` with its message bounded by [`message`].
pub fn status(status: tonic::Status) -> tonic::Status {
    if status.message().len() <= MAX_MESSAGE_BYTES {
        return status;
    }
    tonic::Status::new(status.code(), message(status.message()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_quoted_by_a_bounded_prefix() {
        assert_eq!(quoted("pgd"), "\"pgd\"");
        let long = "x".repeat(1_000_000);
        let q = quoted(&long);
        assert!(q.len() < 100 && q.ends_with("(1000000 characters)"), "{q}");
        assert_eq!(shape(&[1, 28, 28]), "[1, 28, 28]");
        let dims = vec![7i64; 1_500_000];
        let s = shape(&dims);
        assert!(s.len() < 60 && s.ends_with("(1500000 dimensions)"), "{s}");
        let accents = "é".repeat(5000);
        let cut = message(&accents);
        assert!(cut.len() <= MAX_MESSAGE_BYTES + 40 && cut.ends_with("bytes)"));
        assert_eq!(message("short"), "short");
    }
}
