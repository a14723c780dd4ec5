"""A clinic LIS that keeps its MLLP connection to the box open, as HL7's
enhanced mode expects: python `hl7`'s asyncio client sends each message
given (--message FILE, in order, each asking for application ACKs) and
reads its accept ACK, then stays connected and reads what else the box
sends on that connection: the hospital LIS's application ACKs. Each one is
logged (one JSON line: control id it answers, code, raw text) to --log and
acknowledged with the library's own CA, which the box must take as an
answer and not as a result. Exits after --expect of them, or --timeout.
"""

import argparse
import asyncio
import json
import sys

import hl7
import hl7.mllp


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--message", action="append", default=[])
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", a.port, encoding="utf-8")
    for path in a.message:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        writer.writemessage(hl7.parse(text))
        await writer.drain()
        accept = await asyncio.wait_for(reader.readmessage(), a.timeout)
        print(str(accept.segment("MSA")), flush=True)
    got = 0
    while got < a.expect:
        message = await asyncio.wait_for(reader.readmessage(), a.timeout)
        msa = message.segment("MSA")
        with open(a.log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"answers": str(msa[2]), "code": str(msa[1]), "text": str(message)}, ensure_ascii=False) + "\n")
        writer.writemessage(message.create_ack("CA"))
        await writer.drain()
        got += 1
    writer.close()


try:
    asyncio.run(main())
except asyncio.TimeoutError:
    sys.exit("timed out waiting for the box")
