//! Reading processes from `/proc` directly: `/proc/<pid>/stat` is one short line per process
//! that the kernel formats cheaply.

/// The fields of one `/proc/<pid>/stat` line that the sampler uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Threads (tasks) of the process.
    pub threads: u32,
}

/// Parses the content of `/proc/<pid>/stat`. `None` when it is not such a line.
pub fn parse_stat(content: &[u8]) -> Option<Stat> {
    // The name (field 2) is in parentheses and may hold spaces and parentheses itself: the
    // fields after it start after the last `)`. Field n is at index n - 3 from there.
    let after_name = &content[content.iter().rposition(|b| *b == b')')? + 1..];
    let fields: Vec<&[u8]> = after_name
        .split(|b| *b == b' ')
        .filter(|f| !f.is_empty())
        .collect();
    let number = |field: usize| -> Option<u32> {
        std::str::from_utf8(fields.get(field - 3)?)
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(Stat {
        threads: number(20)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_thread_count_after_a_name_with_spaces_and_parentheses() {
        let line = b"4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 120 0 0 0 7 3 0 0 20 0 \
            12 0 987654 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0\n";
        assert_eq!(parse_stat(line), Some(Stat { threads: 12 }));
    }

    #[test]
    fn rejects_what_is_not_a_stat_line() {
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"4242 (cut) S 1 2"), None);
    }
}
