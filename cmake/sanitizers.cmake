# ISTHMUS_SANITIZE="address;undefined" or "thread": applied to every target in the tree.
if(ISTHMUS_SANITIZE)
  string(REPLACE ";" "," _isthmus_san "${ISTHMUS_SANITIZE}")
  add_compile_options(-fsanitize=${_isthmus_san} -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=${_isthmus_san})
  if("thread" IN_LIST ISTHMUS_SANITIZE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC warns for every std::atomic_thread_fence, and Boost.Asio's std_fenced_block has two
    # in each translation unit that includes it (hundreds of lines per build). Asio hands
    # handlers over under its scheduler's mutex, which TSan does see; the TSan suite reports
    # nothing there. Silenced so that a real warning stands out.
    add_compile_options(-Wno-tsan)
  endif()
endif()
