/* brix controller, brix up, and the object CLI (apply/get/delete). */
#ifndef BRIX_CONTROLLER_MAIN_H
#define BRIX_CONTROLLER_MAIN_H

int brix_controller_main(int argc, char **argv);
int brix_up_main(int argc, char **argv);
int brix_apply_main(int argc, char **argv);
int brix_get_main(int argc, char **argv);
int brix_delete_main(int argc, char **argv);

#endif
