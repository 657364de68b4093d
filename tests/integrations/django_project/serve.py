"""Serve the test project on 127.0.0.1 on a free port, as a deployment would: `wsgi` through a
threaded WSGI server (one thread per stream, like gunicorn's gthread), `asgi` through uvicorn.
Prints `serving http://127.0.0.1:PORT`, then serves until SIGTERM."""

import os
import socket
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_events.settings")


def main(kind: str) -> None:
    if kind == "wsgi":
        from timelapser_workers.sinks.sse.wsgi import make_server

        from site_events.wsgi import application

        server = make_server(application, "127.0.0.1", 0)
        print(f"serving http://127.0.0.1:{server.server_address[1]}", flush=True)
        server.serve_forever()
        return
    import uvicorn

    from site_events.asgi import application

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    print(f"serving http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(application, log_level="warning", lifespan="off")).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1])
