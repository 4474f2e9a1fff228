// Streams a byte range of an open file into a response without holding it in
// memory: reads of 256 KiB on the thread pool (uv_fs_read), one at a time,
// running ahead of the socket by at most four pieces (1 MiB), so the disk
// and the socket work at once and memory stays bounded whatever the size.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>

#include "intersync/transport.h"
#include "unique_fd.h"

namespace intersync {

// Sends [offset, offset+length) of `fd` as the body (the head must already
// be sent) and ends the response; aborts it if the file is shorter than
// promised or a read fails. `on_done(bytes_sent)` runs at the end.
void stream_file(uv_loop_t* loop, UniqueFd fd, uint64_t offset, uint64_t length,
                 std::shared_ptr<ResponseWriter> writer,
                 std::function<void(uint64_t)> on_done = {});

}  // namespace intersync
