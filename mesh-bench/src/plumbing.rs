//! What every part of the benchmark uses: its error type and its lines on stdout.

use std::io::Write;

/// The error type of the benchmark's own plumbing (the servers' and clients' errors included).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writes a line to stdout (the workspace denies `println!` outside tools that mean it).
pub(crate) fn println_out(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Writes a line to stdout for the parent (`START`, `END`, the JSON line).
pub(crate) fn line(text: &str) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}
