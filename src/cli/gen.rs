//! `dcfs gen-docs DIR` (hidden): man pages and shell completions generated from the clap
//! definitions, so what `man dcfs-pack` and tab completion say cannot drift from `--help`.
//! The .deb build (scripts/build-deb.sh) runs it with the native binary; the pages are
//! architecture-independent text, so the arm64 package reuses them.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, Outcome, EXIT_CANNOT_RUN, EXIT_DAMAGE};

#[derive(Args)]
pub struct GenDocsArgs {
    /// Directory to write into: man/*.1 and completions/{dcfs.bash,_dcfs,dcfs.fish}.
    out: PathBuf,
}

/// The EXIT STATUS section every page carries: scripts call the subcommands, not `dcfs`.
fn exit_status_roff() -> String {
    format!(
        ".SH \"EXIT STATUS\"\n\
         .TP\n\\fB0\\fR\nSuccess.\n\
         .TP\n\\fB{EXIT_DAMAGE}\\fR\nData damage found (verify, unpack, a corrupt pack).\n\
         .TP\n\\fB{EXIT_CANNOT_RUN}\\fR\nCould not run: bad arguments, I/O errors, missing files.\n"
    )
}

/// The clap tree as the pages show it: the plain package version, not the run-time decode
/// path, so the same pages serve every architecture. Without clap's `help` subcommand for
/// the pages (dcfs(1) is that help; it would list a page that does not exist).
fn command(help_subcommand: bool) -> clap::Command {
    let mut cmd = Cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(!help_subcommand);
    // `--threads` defaults to this machine's core count: a page built on the CI host must not
    // state that number (the help text says "all cores").
    let subs: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, |s| {
            if s.get_arguments().any(|a| a.get_id() == "threads") {
                s.mut_arg("threads", |a| a.hide_default_value(true))
            } else {
                s
            }
        });
    }
    // Building sets each subcommand's display name to "dcfs-<sub>", which names its page.
    cmd.build();
    cmd
}

fn write_page(dir: &Path, cmd: clap::Command, see_also: &str) -> anyhow::Result<PathBuf> {
    let man = clap_mangen::Man::new(cmd);
    let path = dir.join(man.get_filename());
    let mut buf = Vec::new();
    man.render(&mut buf)?;
    buf.extend_from_slice(exit_status_roff().as_bytes());
    buf.extend_from_slice(see_also.as_bytes());
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn gen_docs(a: GenDocsArgs) -> anyhow::Result<Outcome> {
    let man_dir = a.out.join("man");
    let comp_dir = a.out.join("completions");
    for d in [&man_dir, &comp_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cmd = command(false);
    let subs: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let mut see = String::from(".SH \"SEE ALSO\"\n");
    let list: Vec<String> = subs
        .iter()
        .map(|s| format!("\\fBdcfs\\-{}\\fR(1)", s.get_name().replace('-', "\\-")))
        .collect();
    see.push_str(&list.join(", "));
    see.push_str(", \\fBmount\\fR(8), \\fBfusermount3\\fR(1)\n");
    let mut written = vec![write_page(&man_dir, cmd.clone(), &see)?];
    for s in subs {
        written.push(write_page(&man_dir, s, ".SH \"SEE ALSO\"\n\\fBdcfs\\fR(1)\n")?);
    }
    for (shell, file) in [
        (Shell::Bash, "dcfs.bash"),
        (Shell::Zsh, "_dcfs"),
        (Shell::Fish, "dcfs.fish"),
    ] {
        let path = comp_dir.join(file);
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_complete::generate(shell, &mut command(true), "dcfs", &mut f);
        f.flush()?;
        written.push(path);
    }
    for p in written {
        println!("{}", p.display());
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_every_visible_subcommand_and_state_exit_codes() {
        let d = tempfile::tempdir().unwrap();
        gen_docs(GenDocsArgs {
            out: d.path().to_path_buf(),
        })
        .unwrap();
        let top = std::fs::read_to_string(d.path().join("man/dcfs.1")).unwrap();
        assert!(top.contains("EXIT STATUS"), "{top}");
        assert!(!top.contains("rANS decode"), "run-time version leaked into the page");
        let verify = std::fs::read_to_string(d.path().join("man/dcfs-verify.1")).unwrap();
        let host_default = format!("[default: {}]", super::super::util::default_threads());
        assert!(
            verify.contains("threads") && !verify.contains(&host_default),
            "{verify}"
        );
        for s in command(false).get_subcommands().filter(|s| !s.is_hide_set()) {
            let p = d.path().join(format!("man/dcfs-{}.1", s.get_name()));
            let page = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(page.contains("EXIT STATUS") && page.contains(".TH"), "{}", p.display());
        }
        // Hidden developer commands get no page.
        assert!(!d.path().join("man/dcfs-gen-docs.1").exists());
        assert!(!d.path().join("man/dcfs-gpu-defines.1").exists());
        assert!(!d.path().join("man/dcfs-help.1").exists());
        assert!(!top.contains("dcfs\\-help(1)"), "{top}");
        let bash = std::fs::read_to_string(d.path().join("completions/dcfs.bash")).unwrap();
        assert!(bash.contains("verify") && bash.contains("complete"), "{bash}");
        assert!(std::fs::read_to_string(d.path().join("completions/_dcfs"))
            .unwrap()
            .contains("#compdef dcfs"));
        assert!(std::fs::read_to_string(d.path().join("completions/dcfs.fish"))
            .unwrap()
            .contains("complete -c dcfs"));
    }
}
