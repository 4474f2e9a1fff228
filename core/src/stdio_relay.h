// `intersyncd --serve-stdio --fset FSET`: the remote end of the ssh
// transport. sshd runs it with the ssh channel as stdin and stdout; it
// connects to the running daemon's relay socket (relay_socket.h), which
// serves the server fileset FSET whatever its listener speaks (TLS
// included), and relays bytes both ways until either side closes. The
// daemon stays the one owner of the fileset's state and authentication: the
// relay only carries the HTTP messages, as the CGI program does for a web
// server.
#pragma once

#include <string>

#include "config.h"
#include "intersync/result.h"

namespace intersync {

// Relays stdin to the daemon and the daemon to stdout; returns the exit
// status: 0 once either side closed, 1 (after a message on stderr) when the
// daemon cannot be reached. SIGPIPE must be ignored.
int serve_stdio(const Config& config, const std::string& fset);

}  // namespace intersync
