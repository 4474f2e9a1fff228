// A byte stream between two peers, the one thing the HTTP/1.1 connection
// code (http_server.h, http_client.h) needs from a transport: a TCP socket,
// TLS over that socket, or the stdin/stdout pipes of an ssh child all look
// alike through it, so a transport carries bytes and core speaks the
// protocol. Streams stack: TLS is a ByteStream wrapping a ByteStream.
//
// The rules follow libuv's: a call that fails returns a negative errno and
// never invokes its callback; callbacks run from the loop, never from inside
// the call that registered them; nothing throws.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "intersync/result.h"

namespace intersync {

class ByteStream {
 public:
  struct Events {
    // Bytes from the peer, valid only during the call.
    std::function<void(std::string_view data)> on_data;
    // The read side ended, once, after the last on_data: Status::Ok() when
    // the peer finished sending (an orderly EOF; writing may go on), or an
    // Error with a negative errno and a reason that does not repeat the
    // peer (a reset, a failed TLS handshake, the ssh child dying).
    std::function<void(Status)> on_end;
  };
  // 0 once the bytes of a write (or a shutdown) were handed to the kernel,
  // or a negative errno (UV_ECANCELED when the stream closed first).
  using Done = std::function<void(int status)>;

  // Streams are shared: the owner holds one, and an implementation keeps
  // itself alive while it runs the owner's callbacks, so the owner may drop
  // it from inside one. Destroying a stream closes it.
  virtual ~ByteStream() = default;

  // Starts delivering `events`. Called once.
  virtual int read_start(Events events) = 0;
  // Stops delivering on_data until read_resume() (back-pressure): what the
  // peer sends meanwhile waits in the kernel's buffers.
  virtual void read_stop() = 0;
  virtual int read_resume() = 0;

  // Queues `data`; writes complete in order. `done` may be empty.
  virtual int write(std::string data, Done done) = 0;
  // Ends the write side once queued writes are out (TCP: FIN; TLS:
  // close_notify, then FIN; a pipe: closes it). Reading goes on.
  virtual int shutdown(Done done) = 0;
  // Closes both directions at once; no event is delivered afterwards, and
  // pending write callbacks run with UV_ECANCELED. Idempotent.
  virtual void close() = 0;

  // Who is at the other end, for logs: "127.0.0.1:51234", "ssh root@host".
  virtual std::string peer() const = 0;
};

}  // namespace intersync
