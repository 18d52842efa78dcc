//! `push`, and the options every command that reads a remote pack shares.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::util::{human, json_text, Bar};
use super::Outcome;
use dcfs::remote::{self, Location, RemoteOptions, RemoteUrl};

/// How to reach a pack given as `s3://bucket/prefix` or `http(s)://…`. Credentials and
/// region come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
/// AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, web identity, instance metadata);
/// `~/.aws/config` profiles are not read.
#[derive(Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// S3 endpoint URL (MinIO, Ceph, a local test server); default AWS_ENDPOINT_URL, else AWS.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Send anonymous requests (a public bucket).
    #[arg(long)]
    pub no_sign_request: bool,
    /// Allow plain http (also AWS_ALLOW_HTTP=true).
    #[arg(long)]
    pub allow_http: bool,
}

impl RemoteArgs {
    pub fn options(&self) -> RemoteOptions {
        RemoteOptions {
            endpoint: self.endpoint.clone(),
            no_sign_request: self.no_sign_request,
            allow_http: self.allow_http,
            ..Default::default()
        }
    }
}

/// The remote URL `p` names, if it is one (`s3://`, `http://`, `https://`).
pub fn remote_url(p: &Path) -> Result<Option<RemoteUrl>> {
    let Some(s) = p.to_str() else { return Ok(None) };
    match Location::parse(s)? {
        Location::Local(_) => Ok(None),
        Location::Remote(u) => Ok(Some(u)),
    }
}

/// Upload a complete local pack to object storage (s3://bucket/prefix). Containers go up
/// first (multipart when large), then the manifest, then the marker: a pack whose push
/// did not finish is refused by readers.
#[derive(Args)]
pub struct PushArgs {
    /// The local packed directory.
    packed: PathBuf,
    /// Destination: s3://bucket/prefix.
    url: String,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn push(a: PushArgs) -> Result<Outcome> {
    let url = match Location::parse(&a.url)? {
        Location::Remote(u @ RemoteUrl::S3 { .. }) => u,
        Location::Remote(RemoteUrl::Http { .. }) => {
            bail!("push needs s3://bucket/prefix; a plain http server cannot take uploads")
        }
        Location::Local(_) => bail!("push needs s3://bucket/prefix (to copy a pack locally, use cp -a)"),
    };
    let bar = Bar::new(a.json);
    let r = remote::pack::push(&a.packed, &url, &a.remote.options(), &bar);
    bar.finish();
    let r = r.with_context(|| format!("pushing {} to {url}", a.packed.display()))?;
    if a.json {
        println!("{}", json_text(&r, true)?);
    } else {
        println!(
            "pushed {} files ({} dirs, {} symlinks), {} in {:.1}s to {url}",
            r.files,
            r.dirs,
            r.symlinks,
            human(r.bytes),
            r.seconds
        );
    }
    Ok(Outcome::Ok)
}
