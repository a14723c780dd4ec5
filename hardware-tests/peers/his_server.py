"""A clinic HIS for the report tests: python `hl7`'s asyncio MLLP server.

Every message received is appended (as one JSON line: control id, message
type, the time it arrived, raw text) to the file named by --log, then acknowledged with the
library's own ACK builder: AA, or AE for control ids listed in --refuse.
With --silent-once ID, the first message with that control id gets no
answer (the box must send it again).
"""

import argparse
import asyncio
import json
import time

import hl7
import hl7.mllp


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--refuse", action="append", default=[])
    p.add_argument("--silent-once", action="append", default=[])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--encoding", default="utf-8")
    a = p.parse_args()
    silent = set(a.silent_once)

    async def client(reader, writer):
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                control = str(message.segment("MSH")[10])
                kind = str(message.segment("MSH")[9])
                with open(a.log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"control_id": control, "type": kind, "at": time.time(), "text": str(message)}, ensure_ascii=False) + "\n")
                if control in silent:
                    silent.discard(control)
                    continue
                code = "AE" if control in a.refuse else "AA"
                writer.writemessage(message.create_ack(code))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        finally:
            writer.close()

    server = await hl7.mllp.start_hl7_server(client, host=a.host, port=a.port, encoding=a.encoding, limit=64 * 1024 * 1024)
    async with server:
        print("ready", flush=True)
        await server.serve_forever()


asyncio.run(main())
