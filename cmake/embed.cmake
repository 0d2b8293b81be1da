# Turns a text file into a C translation unit defining `const char SYM[]`.
file(READ ${IN} HEX HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," BYTES "${HEX}")
file(WRITE ${OUT} "/* generated from ${IN}; do not edit */\n#include <stddef.h>\n"
     "const char ${SYM}[] = {${BYTES} 0x00};\nconst size_t ${SYM}_len = sizeof(${SYM}) - 1;\n")
