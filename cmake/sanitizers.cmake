# ISTHMUS_SANITIZE="address;undefined" or "thread": applied to every target in the tree.
if(ISTHMUS_SANITIZE)
  string(REPLACE ";" "," _isthmus_san "${ISTHMUS_SANITIZE}")
  add_compile_options(-fsanitize=${_isthmus_san} -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=${_isthmus_san})
endif()
