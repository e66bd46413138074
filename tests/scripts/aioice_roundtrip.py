"""A TURN round trip with aioice, a real third-party TURN client (UDP, ChannelBind).

Usage: aioice_roundtrip.py SERVER_IP SERVER_PORT USER PASSWORD PEER_IP PEER_PORT COUNT [udp|tcp]

Allocates a relayed address, sends COUNT datagrams to an echo peer (aioice binds a channel on the
first send), and waits for every echo. Prints `relayed=IP:PORT sent=N received=M` and exits 0 only
if every echo came back intact. Bounded: 10 s overall.
"""
import asyncio
import sys

import aioice.turn


class Echoes(asyncio.DatagramProtocol):
    def __init__(self):
        self.received = []
        self.event = asyncio.Event()

    def datagram_received(self, data, addr):
        self.received.append((data, addr))
        self.event.set()


async def main():
    server_ip, server_port, user, password, peer_ip, peer_port, count = sys.argv[1:8]
    client_transport = sys.argv[8] if len(sys.argv) > 8 else "udp"
    peer = (peer_ip, int(peer_port))
    count = int(count)
    transport, protocol = await aioice.turn.create_turn_endpoint(
        Echoes,
        server_addr=(server_ip, int(server_port)),
        username=user,
        password=password,
        transport=client_transport,
    )
    try:
        relayed = transport.get_extra_info("sockname")
        sent = []
        for i in range(count):
            payload = b"aioice-%04d-" % i + bytes(range(64))
            sent.append(payload)
            transport.sendto(payload, peer)
            await asyncio.sleep(0.005)
        deadline = asyncio.get_running_loop().time() + 5
        while len(protocol.received) < count and asyncio.get_running_loop().time() < deadline:
            protocol.event.clear()
            try:
                await asyncio.wait_for(protocol.event.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        got = sorted(d for d, a in protocol.received if a == peer)
        intact = sorted(sent) == got
        print(f"relayed={relayed[0]}:{relayed[1]} sent={len(sent)} received={len(got)} intact={intact}")
        return 0 if intact else 1
    finally:
        transport.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(asyncio.wait_for(main(), 10)))
