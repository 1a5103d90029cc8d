use std::{path::Path, process::ExitCode};

use anyhow::Result;
use firewall_user::{compile, policy};

/// Validates and compiles `file`; prints warnings; exit code 1 on errors.
pub fn check(file: &Path) -> Result<ExitCode> {
    let policy = match policy::load(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for w in &policy.warnings {
        eprintln!("{}", w.render("warning"));
    }
    match compile::compile(&policy) {
        Ok(c) => {
            println!("{}: ok ({})", file.display(), compile::describe(&c));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}", e.render(&policy, &file.display().to_string()));
            Ok(ExitCode::FAILURE)
        }
    }
}
