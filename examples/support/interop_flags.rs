//! Command-line flags as gRPC's interop binaries take them (Go's `flag` package): `--name=value`
//! or `--name value`, booleans as `--name`, `--name=true` or `--name=false`; one dash works too.

use std::collections::VecDeque;

/// The flags not yet consumed.
pub(crate) struct Flags {
    args: VecDeque<String>,
}

impl Flags {
    /// The process's arguments.
    pub(crate) fn from_env() -> Self {
        Self { args: std::env::args().skip(1).collect() }
    }

    /// The next flag's name and inline value (`--name=value`), or `None` when all are read.
    pub(crate) fn next_flag(&mut self) -> Option<Result<(String, Option<String>), String>> {
        let arg = self.args.pop_front()?;
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Some(Err(format!("unexpected argument {arg:?} (flags start with --)")));
        };
        Some(Ok(match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (flag.to_owned(), None),
        }))
    }

    /// A flag's value: inline, or the next argument.
    pub(crate) fn value(&mut self, name: &str, inline: Option<String>) -> Result<String, String> {
        inline.or_else(|| self.args.pop_front()).ok_or_else(|| format!("--{name} needs a value"))
    }

    /// A boolean flag: bare means true; inline `true`/`false` (or `1`/`0`).
    pub(crate) fn boolean(name: &str, inline: Option<String>) -> Result<bool, String> {
        match inline.as_deref() {
            None | Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(format!("--{name}={other}: expected true or false")),
        }
    }

    /// A number flag.
    pub(crate) fn number<T: std::str::FromStr>(&mut self, name: &str, inline: Option<String>) -> Result<T, String> {
        let value = self.value(name, inline)?;
        value.parse().map_err(|_| format!("--{name}: {value:?} is not a number"))
    }
}
