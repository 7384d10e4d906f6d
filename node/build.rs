//! Records the commit the binary is built from, for `quarry --version` (and so
//! for benchmark tables that compare two builds): `git rev-parse` of the
//! checkout, or "unknown" outside one.
//!
//! Builds the web console (`console/`, CodeMirror 6 bundled by esbuild) that
//! the binary embeds and serves at `/` of its HTTP listener. Needs Node.js and
//! npm (Debian: `apt-get install nodejs npm`); the packages come from
//! `console/package-lock.json` (`npm ci`) the first time.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn npm(console: &Path, args: &[&str]) {
    let status = Command::new("npm")
        .args(args)
        .current_dir(console)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "the web console is built with npm, which did not run ({e}): install Node.js \
                 and npm (Debian: apt-get install nodejs npm)"
            )
        });
    assert!(
        status.success(),
        "npm {} failed in {}",
        args.join(" "),
        console.display()
    );
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=QUARRY_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }

    let console = Path::new(env!("CARGO_MANIFEST_DIR")).join("../console");
    for input in ["src", "package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed=../console/{input}");
    }
    if !console.join("node_modules").exists() {
        npm(&console, &["ci", "--no-audit", "--no-fund"]);
    }
    npm(&console, &["run", "--silent", "build"]);
}
