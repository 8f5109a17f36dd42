//! The client subcommands: `kxdp services`, `kxdp flows`, `kxdp explain` send one
//! request over the daemon's admin socket and print the answer, as a table or JSON.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::admin::{self, ProtoName, Request, Response};
use crate::cli::{ClientArgs, ExplainArgs, FlowsArgs, OutputArg, ProtoArg};
use crate::tables;

fn proto_name(p: ProtoArg) -> ProtoName {
    match p {
        ProtoArg::Tcp => ProtoName::Tcp,
        ProtoArg::Udp => ProtoName::Udp,
    }
}

fn ask(c: &ClientArgs, req: &Request) -> Result<Response> {
    match admin::request(&c.admin_socket, req)? {
        Response::Error(e) => bail!("the daemon refused the request: {e}"),
        r => Ok(r),
    }
}

fn print<T: Serialize>(c: &ClientArgs, value: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    match c.output {
        OutputArg::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputArg::Table => print!("{}", table(value)),
    }
    Ok(())
}

fn unexpected(r: &Response) -> anyhow::Error {
    anyhow::anyhow!("the daemon answered something else: {r:?}")
}

pub fn services(c: &ClientArgs) -> Result<()> {
    match ask(c, &Request::Services {})? {
        Response::Services(list) => print(c, &list, |l| tables::services(l)),
        r => Err(unexpected(&r)),
    }
}

pub fn flows(a: &FlowsArgs) -> Result<()> {
    let req = Request::Flows {
        service: a.service.clone(),
        src: a.src.clone(),
        dst: a.dst.clone(),
        proto: a.proto.map(proto_name),
        limit: a.limit,
    };
    match ask(&a.client, &req)? {
        Response::Flows(f) => print(&a.client, &f, tables::flows),
        r => Err(unexpected(&r)),
    }
}

pub fn explain(a: &ExplainArgs) -> Result<()> {
    let req = Request::Explain {
        proto: proto_name(a.proto),
        src: a.src,
        dst: a.dst,
    };
    match ask(&a.client, &req)? {
        Response::Explain(e) => print(&a.client, &e, |e| tables::explain(e)),
        r => Err(unexpected(&r)),
    }
}
