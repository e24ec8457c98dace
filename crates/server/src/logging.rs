//! How log lines are written: the field formatter escapes control characters in every value
//! (and in the message), so a string that came from the network (a user name, a client id,
//! a vhost, queue or exchange name, a STOMP header, a destination, an error text quoting any
//! of them) cannot start a forged log line with a newline or drive the terminal with an
//! escape sequence. It is one place for the rule, so no call site can forget it; it does not
//! decide what is logged, and values keep their usual shape (`%` as text, `?` and plain
//! strings quoted).

use std::fmt::{self, Debug, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Formats an event's or a span's fields as `message name=value ...`, every value escaped.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes each field it visits, separated by spaces.
struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write_field(&mut self, field: &Field, value: &dyn Debug) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        let name = field.name();
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(self.writer, "{name}=")?;
        }
        write!(Escaping(&mut self.writer), "{value:?}")
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if self.result.is_ok() {
            self.result = self.write_field(field, value);
        }
    }
}

/// A writer that passes text through with control characters escaped as Rust does
/// (`\n`, `\r`, `\u{1b}`).
struct Escaping<'a, W>(&'a mut W);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let mut chars = rest[at..].chars();
            if let Some(c) = chars.next() {
                write!(self.0, "{}", c.escape_debug())?;
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
}

/// Characters that could end a log line, start a forged one, or change how a terminal shows
/// what follows: control characters, Unicode line and paragraph separators, and the
/// bidirectional overrides.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(emit: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn a_newline_in_any_value_stays_on_one_line() {
        let user = "guest\n2026-01-01T00:00:00Z ERROR junction: forged";
        let output = logged(|| {
            tracing::warn!(user = %user, plain = user, debug = ?user, "login refused for {user}");
        });
        assert_eq!(output.lines().count(), 1, "{output}");
        assert!(output.contains(r"user=guest\n2026"), "{output}");
        assert!(output.contains(r#"plain="guest\n2026"#), "{output}");
        assert!(
            output.contains(r"login refused for guest\n2026"),
            "{output}"
        );
    }

    #[test]
    fn terminal_escapes_and_separators_are_escaped_and_ordinary_text_is_kept() {
        let output = logged(|| {
            tracing::info!(queue = %"a\u{1b}[31mred\u{2028}b\tc", reason = %"ordinary 'text' ü", "ok");
        });
        assert!(!output.contains('\u{1b}'), "{output}");
        assert!(
            output.contains(r"queue=a\u{1b}[31mred\u{2028}b\tc"),
            "{output}"
        );
        assert!(output.contains("reason=ordinary 'text' ü"), "{output}");
        assert!(
            output
                .trim_end()
                .ends_with("ok queue=a\\u{1b}[31mred\\u{2028}b\\tc reason=ordinary 'text' ü"),
            "{output}"
        );
    }
}
