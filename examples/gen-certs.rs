//! Writes a throwaway development CA and SPIFFE leaf certificates to a directory, to try mesh's
//! mutual TLS by hand across processes (`echo-server`, `echo-client`, curl).
//!
//! ```text
//! cargo run --example gen-certs -- --out DIR --trust-domain example.org [--dns localhost] NAME...
//! ```
//!
//! Writes `DIR/ca.pem` and `DIR/ca-key.pem` (a new CA for the trust domain), and for each NAME
//! `DIR/NAME.pem` and `DIR/NAME-key.pem`: a certificate for `spiffe://<trust domain>/NAME`, valid
//! from an hour ago for 24 hours, with every `--dns` name (repeatable) as a DNS SAN as well, so
//! that tools that check host names (curl) accept it. NAME may have several segments
//! (`ns/prod/sa/web`); its files then use `_` for `/` (`ns_prod_sa_web.pem`). Key files are
//! written with mode 0600.
//!
//! Each run makes a new CA: certificates written by an earlier run no longer verify against the
//! new `ca.pem`. This is for development only; in production a SPIRE agent or cert-manager issues
//! and renews certificates (see `docs/security.md`).
//!
//! Exits 2 on bad usage, 1 if a certificate or a file cannot be written.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use mesh::core::{
    TrustDomain,
    identity::dev::{DevCa, LeafSpec},
};

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: gen-certs --out DIR --trust-domain DOMAIN [--dns NAME]... NAME...";

struct Args {
    out: PathBuf,
    trust_domain: TrustDomain,
    dns: Vec<String>,
    /// (SPIFFE path without the leading '/', file stem)
    names: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let (mut out, mut trust_domain, mut dns, mut names) = (None, None, Vec::new(), Vec::new());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--trust-domain" => {
                let td = value("--trust-domain")?;
                trust_domain = Some(TrustDomain::new(&td).map_err(|e| format!("--trust-domain: {e}"))?);
            }
            "--dns" => {
                let name = value("--dns")?;
                if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || b".-_*".contains(&c)) {
                    return Err(format!("--dns: {name:?} is not a DNS name"));
                }
                dns.push(name);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            flag if flag.starts_with('-') => return Err(format!("unknown argument {flag:?} (try --help)")),
            name => names.push(name.to_owned()),
        }
    }
    let out = out.ok_or("--out DIR is required")?;
    let trust_domain = trust_domain.ok_or("--trust-domain DOMAIN is required (example.org, say)")?;
    if names.is_empty() {
        return Err("name at least one workload (server client, say)".into());
    }
    let mut checked: Vec<(String, String)> = Vec::new();
    for name in names {
        if name.starts_with('/') {
            return Err(format!("NAME {name:?}: give the SPIFFE path without its leading '/'"));
        }
        // The SPIFFE ID rules: segments of a-z, A-Z, 0-9, '.', '-', '_', none empty, '.' or '..'.
        trust_domain.id(&format!("/{name}")).map_err(|e| format!("NAME {name:?} is not a SPIFFE path: {e}"))?;
        let stem = name.replace('/', "_");
        if stem == "ca" {
            return Err("NAME \"ca\" would overwrite the CA's files; choose another name".into());
        }
        if let Some((other, _)) = checked.iter().find(|(_, s)| *s == stem) {
            return Err(format!("NAME {name:?} and {other:?} would both be written to {stem}.pem"));
        }
        checked.push((name, stem));
    }
    Ok(Args { out, trust_domain, dns, names: checked })
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("gen-certs: {message}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(&args) {
        eprintln!("gen-certs: {error}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Error> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let ca = DevCa::new(args.trust_domain.clone())?;
    let ca_file = args.out.join("ca.pem");
    let replaced = ca_file.exists();
    write(&ca_file, ca.cert_pem(), false)?;
    println!("wrote {}  (CA of trust domain {}, valid 10 years)", ca_file.display(), args.trust_domain);
    let ca_key = args.out.join("ca-key.pem");
    write(&ca_key, ca.key_pem(), true)?;
    println!("wrote {}  (CA private key)", ca_key.display());
    if replaced {
        println!("  note: replaced the previous ca.pem; certificates it issued no longer verify");
    }

    let dns = if args.dns.is_empty() { String::new() } else { format!(", DNS {}", args.dns.join(", ")) };
    for (path, stem) in &args.names {
        let id = args.trust_domain.id(&format!("/{path}"))?;
        let spec = args.dns.iter().fold(LeafSpec::new(&id), |spec, name| spec.dns(name.clone()));
        let cert = ca.issue_with(&spec)?;
        // What mesh will make of it: exactly one SPIFFE ID, a matching key, valid now.
        cert.credentials().map_err(|e| format!("the certificate issued for {id} does not load: {e}"))?;
        let (cert_file, key_file) = (args.out.join(format!("{stem}.pem")), args.out.join(format!("{stem}-key.pem")));
        write(&cert_file, &cert.cert_pem, false)?;
        write(&key_file, &cert.key_pem, true)?;
        println!("wrote {}  ({id}{dns}, valid 24 hours)", cert_file.display());
        println!("wrote {}", key_file.display());
    }
    Ok(())
}

/// Writes `contents` to `path` through a temporary file renamed over it, so a process watching the
/// directory never reads half a file. Private keys get mode 0600 from the start (on unix).
fn write(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write", e).into());
    }
    Ok(())
}
