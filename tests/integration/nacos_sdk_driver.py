"""Drives the real nacos-sdk-python (v2 gRPC client) for tests/integration/nacos_sdk.rs.

One JSON command per line on stdin, one JSON answer per line on stdout:
  {"op": "connect", "client": "a", "addr": "127.0.0.1:PORT"}   naming + config services
  {"op": "register", "client": "a", "service": "s", "ip": "10.0.0.1", "port": 80, "ephemeral": true}
  {"op": "deregister", ...same fields}
  {"op": "batch", "client": "a", "service": "s", "instances": [["10.0.0.1", 80], ...]}
  {"op": "list", "client": "a", "service": "s"}                 -> {"hosts": ["ip:port", ...]}
  {"op": "services", "client": "a"}                            -> {"count": n, "names": [...]}
  {"op": "subscribe", "client": "a", "service": "s"}
  {"op": "pushed", "client": "a", "service": "s"}               -> {"pushes": [["ip:port", ...], ...]}
  {"op": "publish", "client": "a", "data_id": "d", "group": "g", "content": "x", "cas_md5": ""}
  {"op": "get", "client": "a", "data_id": "d", "group": "g"}     -> {"content": "..."}
  {"op": "remove", "client": "a", "data_id": "d", "group": "g"}
  {"op": "listen", "client": "a", "data_id": "d", "group": "g"}
  {"op": "heard", "client": "a", "data_id": "d", "group": "g"}   -> {"heard": [content, ...]}
  {"op": "close", "client": "a"}
Every answer has "ok": true, or "ok": false with "error". The SDK's own logs go to a
directory named by NACOS_SDK_LOG_DIR.
"""

import asyncio
import json
import os
import sys
import traceback

from v2.nacos import (ClientConfigBuilder, ConfigParam, DeregisterInstanceParam,
                      GRPCConfig, ListInstanceParam, ListServiceParam, NacosConfigService,
                      NacosNamingService, RegisterInstanceParam, SubscribeServiceParam)
from v2.nacos.naming.model.naming_param import BatchRegisterInstanceParam


class Client:
    def __init__(self, naming, config):
        self.naming = naming
        self.config = config
        self.pushes = {}
        self.heard = {}


clients = {}


def hosts(instances):
    return sorted(f"{i.ip}:{i.port}" for i in instances)


async def connect(cmd):
    work = os.environ.get("NACOS_SDK_LOG_DIR", "/tmp")
    builder = (ClientConfigBuilder()
               .server_address(cmd["addr"])
               .log_dir(work)
               .cache_dir(os.path.join(work, "cache-" + cmd["client"]))
               .grpc_config(GRPCConfig(grpc_timeout=10000)))
    config = builder.build()
    # Show a subscriber the last instance going away too (the default drops empty pushes).
    config.update_cache_when_empty = True
    naming = await NacosNamingService.create_naming_service(config)
    configs = await NacosConfigService.create_config_service(config)
    clients[cmd["client"]] = Client(naming, configs)
    return {}


def instance_param(cmd, ip, port):
    return RegisterInstanceParam(service_name=cmd["service"], ip=ip, port=port,
                                 ephemeral=cmd.get("ephemeral", True),
                                 metadata={"from": "python"})


async def run(cmd):
    op = cmd["op"]
    if op == "connect":
        return await connect(cmd)
    c = clients[cmd["client"]]
    if op == "register":
        ok = await c.naming.register_instance(instance_param(cmd, cmd["ip"], cmd["port"]))
        return {"result": ok}
    if op == "deregister":
        ok = await c.naming.deregister_instance(DeregisterInstanceParam(
            service_name=cmd["service"], ip=cmd["ip"], port=cmd["port"],
            ephemeral=cmd.get("ephemeral", True)))
        return {"result": ok}
    if op == "batch":
        ok = await c.naming.batch_register_instances(BatchRegisterInstanceParam(
            service_name=cmd["service"],
            instances=[instance_param(cmd, ip, port) for ip, port in cmd["instances"]]))
        return {"result": ok}
    if op == "list":
        found = await c.naming.list_instances(ListInstanceParam(
            service_name=cmd["service"], subscribe=False, healthy_only=None))
        return {"hosts": hosts(found)}
    if op == "services":
        page = await c.naming.list_services(ListServiceParam(page_size=100))
        return {"count": page.count, "names": sorted(page.services)}
    if op == "subscribe":
        service = cmd["service"]
        c.pushes.setdefault(service, [])

        async def on_change(instances):
            c.pushes[service].append(hosts(instances))

        await c.naming.subscribe(SubscribeServiceParam(service_name=service,
                                                       subscribe_callback=on_change))
        return {}
    if op == "pushed":
        return {"pushes": c.pushes.get(cmd["service"], [])}
    if op == "publish":
        ok = await c.config.publish_config(ConfigParam(
            data_id=cmd["data_id"], group=cmd["group"], content=cmd["content"],
            cas_md5=cmd.get("cas_md5", "")))
        return {"result": ok}
    if op == "get":
        content = await c.config.get_config(ConfigParam(data_id=cmd["data_id"], group=cmd["group"]))
        return {"content": content}
    if op == "remove":
        ok = await c.config.remove_config(ConfigParam(data_id=cmd["data_id"], group=cmd["group"]))
        return {"result": ok}
    if op == "listen":
        key = (cmd["data_id"], cmd["group"])
        c.heard.setdefault(key, [])

        async def on_config(tenant, group, data_id, content):
            c.heard[(data_id, group)].append(content)

        await c.config.add_listener(cmd["data_id"], cmd["group"], on_config)
        return {}
    if op == "heard":
        return {"heard": c.heard.get((cmd["data_id"], cmd["group"]), [])}
    if op == "close":
        await c.naming.shutdown()
        await c.config.shutdown()
        del clients[cmd["client"]]
        return {}
    raise ValueError(f"unknown op {op}")


async def main():
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        try:
            answer = await run(cmd)
            answer["ok"] = True
        except Exception as e:  # the test reads the error
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}",
                      "trace": traceback.format_exc()}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    os._exit(0)


asyncio.run(main())
