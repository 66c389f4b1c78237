/* spin: loops forever without a single VM exit.
 *
 * A VMM must still be able to stop it: `minikvm run --timeout S` kicks the
 * vCPU out of KVM_RUN with a signal and ends with status 124.
 */
    .code16
    .text
    .globl _start
_start:
    cli
1:  jmp     1b
