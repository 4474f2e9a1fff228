// Clean-up of abandoned upload staging files; see upload_staging.h.
#include "upload_staging.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <ctime>

namespace intersync {

Result<RemovedUploads> remove_abandoned_uploads(const std::string& tmp_dir,
                                                std::chrono::seconds max_age) {
  DIR* d = opendir(tmp_dir.c_str());
  if (!d) return errno_error(tmp_dir + ": " + strerror(errno));
  RemovedUploads removed;
  time_t oldest_kept = time(nullptr) - static_cast<time_t>(max_age.count());
  while (struct dirent* e = readdir(d)) {
    if (std::strncmp(e->d_name, "up-", 3) != 0) continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
        st.st_mtim.tv_sec >= oldest_kept) {
      continue;
    }
    if (unlinkat(dirfd(d), e->d_name, 0) == 0) {
      ++removed.files;
      removed.bytes += static_cast<uint64_t>(st.st_size);
    }
  }
  closedir(d);
  return removed;
}

}  // namespace intersync
