//! What the collector stores of a command line, decided before a row is built, so that
//! nothing the policy hides reaches the database or the spool: all of it
//! ([`CommandLinePolicy::Full`]), none of it ([`CommandLinePolicy::None`], the process name
//! stays in its own column), or, the default, with the values of arguments that look like
//! secrets replaced by [`REDACTED`]. Pure: no I/O.
//!
//! # What redaction replaces
//!
//! Keys are compared without regard to case, and as whole names or name endings, never as
//! substrings: a key is secret when it ends with `password`, `passwd`, `passphrase`,
//! `secret`, `token`, `apikey`, `secretkey`, `accesskey` or `privatekey`, or when its last
//! part (split at `-`, `_` and `.`) is `key` or `pwd`. So `--password`, `--db-password`,
//! `PGPASSWORD`, `--client-secret`, `--access-token`, `GITHUB_TOKEN`, `--api-key`,
//! `--apikey`, `AWS_SECRET_ACCESS_KEY`, `FOO_KEY`, `MYSQL_PWD` and `password` are secret;
//! `--tokenizer`, `--max-tokens`, `--token-ttl`, `--password-file`, `--passwords-file`
//! (they name a file, not its content), `--secret-name`, `MONKEY` and `--keyring` are not.
//! A key starting with `no-` or `no_` is a switch (`--no-password`) and never secret.
//!
//! - `key=value`, with or without leading dashes (`--password=x`, `-token=x`,
//!   `FOO_KEY=x`, `password=x`, `--set=db.password=x`, a URL's `?password=x`): the value.
//! - `--key value` (one or two dashes, the Go and GNU styles): the next argument, unless it
//!   is itself a long option (`--...`). Single-letter options (`-p`) are left alone: `-p` is a
//!   port (`psql`, `ssh`, `redis-cli`) at least as often as a password (`mysql`, which
//!   prompts unless the password is glued to it).
//! - `scheme://user:password@host...`: the password (`postgres://u:***@h/d`), wherever the
//!   URL is (`--db=postgres://...`). The password runs to the last `@` before the host, so a
//!   raw `@` or `/` in it is hidden too; a URL with a `:` before an `@` in its path loses a
//!   little more than its password.
//! - `Authorization:` (as in `curl -H 'Authorization: Bearer ...'`): the rest of the
//!   argument.
//!
//! An argument may hold several words (a shell script after `sh -c`, a libpq connection
//! string `host=h password=p`): the rules apply to each word. A value runs to the end of its
//! argument when its key starts the argument (`--password=a b`, as a program receives it),
//! to the end of its word when the key is inside the argument, and to the next `&` when it
//! is a URL's query parameter; a value that opens a quote runs to the closing quote.
//!
//! Not recognised: secrets that no key announces (a bare positional argument), JSON, and
//! `-u user:password` (curl). Over-redaction is preferred to a leak wherever the form is
//! ambiguous.

use std::ops::Range;

pub use metricsstack_common::config::CommandLinePolicy;

/// What a secret value is replaced with.
pub const REDACTED: &str = "***";

/// The command line stored for a process whose arguments are `args`: joined by spaces,
/// under `policy`, cut to `max_chars` characters after redaction (so that a cut can never
/// keep part of a secret that redaction would have recognised whole). `None` when there is
/// nothing to store.
pub fn stored(args: &[String], policy: CommandLinePolicy, max_chars: usize) -> Option<String> {
    let joined = match policy {
        CommandLinePolicy::None => return None,
        CommandLinePolicy::Full => args.join(" "),
        CommandLinePolicy::Redacted => redact(args).join(" "),
    };
    (!joined.is_empty()).then(|| joined.chars().take(max_chars).collect())
}

/// The arguments with the values that look like secrets replaced by [`REDACTED`] (see the
/// module's documentation for the rules).
pub fn redact(args: &[String]) -> Vec<String> {
    let mut redacted = Vec::with_capacity(args.len());
    let mut value_next = false;
    for arg in args {
        if std::mem::take(&mut value_next) && !arg.starts_with("--") {
            redacted.push(REDACTED.to_owned());
            continue;
        }
        let (ranges, pending) = secret_ranges(arg);
        value_next = pending;
        redacted.push(replace(arg, ranges));
    }
    redacted
}

/// Whether a key (an option's or a variable's name) names a secret.
fn is_secret_key(key: &str) -> bool {
    const ENDINGS: [&str; 9] = [
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "secretkey",
        "accesskey",
        "privatekey",
    ];
    const LAST_PARTS: [&str; 2] = ["key", "pwd"];
    let key = key.trim_start_matches('-').to_ascii_lowercase();
    if key.starts_with("no-") || key.starts_with("no_") {
        return false;
    }
    let last_part = key.rsplit(['-', '_', '.']).next().unwrap_or_default();
    ENDINGS.iter().any(|ending| key.ends_with(ending)) || LAST_PARTS.contains(&last_part)
}

/// Whether `byte` can be part of a key.
fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')
}

/// The byte ranges of the words of `arg` (runs of non-whitespace).
fn words(arg: &str) -> Vec<Range<usize>> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in arg.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                words.push(s..i);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push(s..arg.len());
    }
    words
}

/// The end of a value starting at `start` in `arg` that opens a quote: after the closing
/// quote, or the end of the argument. `None` if the value opens no quote.
fn quoted_end(arg: &str, start: usize) -> Option<usize> {
    let quote = *arg
        .as_bytes()
        .get(start)
        .filter(|b| matches!(b, b'\'' | b'"'))?;
    Some(
        arg.as_bytes()[start + 1..]
            .iter()
            .position(|b| *b == quote)
            .map_or(arg.len(), |i| start + 1 + i + 1),
    )
}

/// The byte ranges of the secret values in one argument, and whether the argument ends with
/// a secret option whose value is the next argument.
fn secret_ranges(arg: &str) -> (Vec<Range<usize>>, bool) {
    let bytes = arg.as_bytes();
    let words = words(arg);
    let mut ranges = Vec::new();
    let mut value_next = false;
    for (index, word) in words.iter().enumerate() {
        let text = &arg[word.clone()];
        if std::mem::take(&mut value_next) && !text.starts_with("--") {
            ranges.push(word.start..quoted_end(arg, word.start).unwrap_or(word.end));
            continue;
        }
        if text.eq_ignore_ascii_case("authorization:") {
            if let Some(next) = words.get(index + 1) {
                ranges.push(next.start..arg.len());
            }
            break;
        }
        if text.len() > 2 && text.starts_with('-') && !text.contains('=') && is_secret_key(text) {
            if index + 1 == words.len() {
                return (ranges, true);
            }
            value_next = true;
            continue;
        }
        // `key=value` pairs, wherever they are in the word.
        let mut at = word.start;
        while let Some(offset) = arg[at..word.end].find('=') {
            let equals = at + offset;
            let key_start = bytes[word.start..equals]
                .iter()
                .rposition(|b| !is_key_byte(*b))
                .map_or(word.start, |i| word.start + i + 1);
            let value = equals + 1;
            at = value;
            if value == bytes.len() || !is_secret_key(&arg[key_start..equals]) {
                continue;
            }
            let query_parameter = key_start > 0 && matches!(bytes[key_start - 1], b'?' | b'&');
            let end = quoted_end(arg, value).unwrap_or_else(|| {
                if query_parameter {
                    arg[value..word.end]
                        .find('&')
                        .map_or(word.end, |i| value + i)
                } else if key_start == word.start && index == 0 {
                    arg.len()
                } else {
                    word.end
                }
            });
            if end > value {
                ranges.push(value..end);
            }
            at = end.min(word.end).max(value);
        }
        ranges.extend(url_passwords(arg, word.clone()));
    }
    (ranges, false)
}

/// The passwords of the URLs with credentials (`scheme://user:password@host`) in a word.
fn url_passwords(arg: &str, word: Range<usize>) -> Vec<Range<usize>> {
    let bytes = arg.as_bytes();
    let mut ranges = Vec::new();
    let mut at = word.start;
    while let Some(offset) = arg[at..word.end].find("://") {
        let authority = at + offset + 3;
        at = authority;
        // A scheme: a letter, then letters, digits, `+`, `-` or `.`.
        let scheme_start = bytes[word.start..authority - 3]
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
            .map_or(word.start, |i| word.start + i + 1);
        if scheme_start == authority - 3 || !bytes[scheme_start].is_ascii_alphabetic() {
            continue;
        }
        // The credentials end at the first `@`, or at a later one before the path starts.
        let Some(first_at) = arg[authority..word.end].find('@').map(|i| authority + i) else {
            continue;
        };
        let mut credentials_end = first_at;
        for (i, b) in bytes[first_at + 1..word.end].iter().enumerate() {
            match b {
                b'@' => credentials_end = first_at + 1 + i,
                b'/' | b'?' | b'#' => break,
                _ => {}
            }
        }
        if let Some(colon) = arg[authority..credentials_end].find(':') {
            let password = authority + colon + 1..credentials_end;
            if !password.is_empty() {
                ranges.push(password);
            }
        }
        at = credentials_end + 1;
    }
    ranges
}

/// `arg` with each of `ranges` (byte ranges, in any order, possibly overlapping) replaced by
/// one [`REDACTED`].
fn replace(arg: &str, mut ranges: Vec<Range<usize>>) -> String {
    if ranges.is_empty() {
        return arg.to_owned();
    }
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(arg.len());
    let mut copied = 0;
    for range in ranges {
        if range.end <= copied {
            continue;
        }
        if range.start >= copied {
            out.push_str(&arg[copied..range.start]);
            out.push_str(REDACTED);
        }
        copied = range.end;
    }
    out.push_str(&arg[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Vec<String> {
        line.iter().map(|a| (*a).to_owned()).collect()
    }

    /// Each case: the arguments, and the command line stored under `Redacted`.
    #[test]
    fn redacts_the_values_of_secret_looking_arguments_and_nothing_else() {
        let cases: &[(&[&str], &str)] = &[
            // Options with `=`, any case, one or two dashes.
            (&["app", "--password=hunter2"], "app --password=***"),
            (&["app", "--PASSWORD=hunter2"], "app --PASSWORD=***"),
            (&["app", "-password=hunter2"], "app -password=***"),
            (&["app", "--db-password=x"], "app --db-password=***"),
            (&["app", "--passwd=x"], "app --passwd=***"),
            (&["app", "--token=abc=="], "app --token=***"),
            (&["app", "--access-token=abc"], "app --access-token=***"),
            (&["app", "--secret=s"], "app --secret=***"),
            (&["app", "--client-secret=s"], "app --client-secret=***"),
            (&["app", "--client_secret=s"], "app --client_secret=***"),
            (&["app", "--api-key=k"], "app --api-key=***"),
            (&["app", "--apikey=k"], "app --apikey=***"),
            (&["app", "--ApiKey=k"], "app --ApiKey=***"),
            (&["app", "--key=k"], "app --key=***"),
            (&["app", "--password=a b"], "app --password=***"),
            (&["app", "--password="], "app --password="),
            // The value in the next argument.
            (
                &["app", "--password", "hunter2", "-v"],
                "app --password *** -v",
            ),
            (&["app", "-token", "abc"], "app -token ***"),
            (&["app", "--api-key", "k", "x"], "app --api-key *** x"),
            (&["app", "--secret", "my secret"], "app --secret ***"),
            (&["app", "--password", "-dashing"], "app --password ***"),
            (
                &["app", "--password", "--verbose"],
                "app --password --verbose",
            ),
            (&["app", "--token"], "app --token"),
            // Environment style.
            (&["env", "FOO_KEY=k", "app"], "env FOO_KEY=*** app"),
            (&["env", "GITHUB_TOKEN=t"], "env GITHUB_TOKEN=***"),
            (&["env", "CLIENT_SECRET=s"], "env CLIENT_SECRET=***"),
            (&["env", "DB_PASSWORD=p"], "env DB_PASSWORD=***"),
            (&["env", "PASSWORD=p"], "env PASSWORD=***"),
            (&["env", "password=p"], "env password=***"),
            (&["env", "PGPASSWORD=p"], "env PGPASSWORD=***"),
            (&["env", "MYSQL_PWD=p"], "env MYSQL_PWD=***"),
            (
                &["env", "AWS_SECRET_ACCESS_KEY=k"],
                "env AWS_SECRET_ACCESS_KEY=***",
            ),
            (
                &["helm", "--set", "db.password=p,x=1"],
                "helm --set db.password=***",
            ),
            (
                &["helm", "--set=db.password=p"],
                "helm --set=db.password=***",
            ),
            // URLs with credentials, alone or as a value.
            (
                &["app", "--db=postgres://u:p@h/d"],
                "app --db=postgres://u:***@h/d",
            ),
            (
                &["psql", "postgres://u:p@h:5432/d"],
                "psql postgres://u:***@h:5432/d",
            ),
            (&["app", "redis://:p@h"], "app redis://:***@h"),
            (&["app", "amqp://u:p@ss@h/v"], "app amqp://u:***@h/v"),
            (&["app", "amqp://u:pa/ss@h/v"], "app amqp://u:***@h/v"),
            (
                &["app", "postgres://u@h/d?sslmode=require&password=p&x=1"],
                "app postgres://u@h/d?sslmode=require&password=***&x=1",
            ),
            (&["app", "postgres://u@h/d"], "app postgres://u@h/d"),
            (&["app", "https://h:8443/x"], "app https://h:8443/x"),
            // Inside an argument of several words.
            (
                &["sh", "-c", "cd /x && DB_TOKEN=t exec app --password p -q"],
                "sh -c cd /x && DB_TOKEN=*** exec app --password *** -q",
            ),
            (&["sh", "-c", "PASSWORD=p app"], "sh -c PASSWORD=***"),
            (
                &["sh", "-c", "app --password='a b' -q"],
                "sh -c app --password=*** -q",
            ),
            (
                &["app", "host=h user=u password=p dbname=d"],
                "app host=h user=u password=*** dbname=d",
            ),
            (
                &["curl", "-H", "Authorization: Bearer abc", "https://h"],
                "curl -H Authorization: *** https://h",
            ),
            (&["sh", "-c", "app --token"], "sh -c app --token"),
            (&["sh", "-c", "app --token", "t"], "sh -c app --token ***"),
            // Left alone: not a secret's key.
            (&["app", "--tokenizer=bert"], "app --tokenizer=bert"),
            (&["app", "--tokenizer", "bert"], "app --tokenizer bert"),
            (&["app", "--max-tokens=100"], "app --max-tokens=100"),
            (&["app", "--token-ttl=5m"], "app --token-ttl=5m"),
            (&["app", "--password-file=/x"], "app --password-file=/x"),
            (&["app", "--passwords-file=/x"], "app --passwords-file=/x"),
            (&["app", "--secret-name=s"], "app --secret-name=s"),
            (&["app", "--keyring=k"], "app --keyring=k"),
            (&["env", "MONKEY=banana"], "env MONKEY=banana"),
            (&["env", "HOTKEY=F1"], "env HOTKEY=F1"),
            (&["psql", "-p", "5432", "-U", "u"], "psql -p 5432 -U u"),
            (
                &["pg_dump", "--no-password", "db"],
                "pg_dump --no-password db",
            ),
            (&["/usr/bin/secret-token"], "/usr/bin/secret-token"),
            (&["app", "a=b", "x==y", "="], "app a=b x==y ="),
            (
                &["app", "ünïcode=ß", "PASSWORD=ß"],
                "app ünïcode=ß PASSWORD=***",
            ),
            (
                &["java", "-Djavax.net.ssl.keyStorePassword=s", "-Dx=1"],
                "java -Djavax.net.ssl.keyStorePassword=*** -Dx=1",
            ),
        ];
        for (given, expected) in cases {
            assert_eq!(
                stored(&args(given), CommandLinePolicy::Redacted, 8192).as_deref(),
                Some(*expected),
                "{given:?}"
            );
        }
    }

    /// Arguments built from the characters the rules look at, multi-byte ones among them:
    /// redaction never panics (the collector would stop), and a secret in a recognised form
    /// never survives, whatever surrounds it.
    #[test]
    fn odd_arguments_neither_panic_nor_leak() {
        const PIECES: [&str; 22] = [
            "=",
            ":",
            "/",
            "//",
            "@",
            "?",
            "&",
            "'",
            "\"",
            "-",
            "--",
            " ",
            "\t",
            "é",
            "ß",
            "€",
            "\u{a0}",
            "key",
            "token",
            "postgres://",
            "a",
            "_",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for _ in 0..20_000 {
            let arg = |next: &mut dyn FnMut(usize) -> usize| {
                (0..next(12))
                    .map(|_| PIECES[next(PIECES.len())])
                    .collect::<String>()
            };
            let line = vec![arg(&mut next), arg(&mut next), arg(&mut next)];
            let _ = stored(&line, CommandLinePolicy::Redacted, 64);
            let secret = vec![
                arg(&mut next),
                format!("--password=SECRET{}", arg(&mut next)),
                format!(
                    "{} --db=postgres://u:SECRET@h/d {}",
                    arg(&mut next),
                    arg(&mut next)
                ),
                format!("{} DB_TOKEN=SECRET {}", arg(&mut next), arg(&mut next)),
            ];
            let redacted = redact(&secret).join(" ");
            assert!(!redacted.contains("SECRET"), "{secret:?}: {redacted}");
        }
    }

    #[test]
    fn full_keeps_everything_and_none_stores_nothing() {
        let line = args(&["app", "--password=hunter2", "--db=postgres://u:p@h/d"]);
        assert_eq!(
            stored(&line, CommandLinePolicy::Full, 8192).as_deref(),
            Some("app --password=hunter2 --db=postgres://u:p@h/d")
        );
        assert_eq!(stored(&line, CommandLinePolicy::None, 8192), None);
        assert_eq!(
            stored(&line, CommandLinePolicy::Redacted, 8192).as_deref(),
            Some("app --password=*** --db=postgres://u:***@h/d")
        );
        assert_eq!(stored(&[], CommandLinePolicy::Full, 8192), None);
    }

    #[test]
    fn cuts_after_redacting_so_no_part_of_a_secret_survives_the_cut() {
        let line = args(&["app", "--password=hunter2"]);
        // Cut before redaction, "app --password=hun" would be stored, unrecognisable.
        assert_eq!(
            stored(&line, CommandLinePolicy::Redacted, 18).as_deref(),
            Some("app --password=***")
        );
        assert_eq!(
            stored(&line, CommandLinePolicy::Redacted, 16).as_deref(),
            Some("app --password=*")
        );
        assert_eq!(
            stored(&line, CommandLinePolicy::Full, 18).as_deref(),
            Some("app --password=hun")
        );
    }
}
