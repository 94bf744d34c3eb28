package io.apicurio.common.apps.config;

import jakarta.enterprise.util.Nonbinding;
import java.lang.annotation.Documented;
import java.lang.annotation.ElementType;
import java.lang.annotation.Retention;
import java.lang.annotation.RetentionPolicy;
import java.lang.annotation.Target;

/**
 * Stand-in: documentation metadata on a config property, with the members the Apicurio Registry
 * 3.0.9 app's bytecode uses (`category` is an enum there, a String in 3.0.6).
 */
@Documented
@Retention(RetentionPolicy.RUNTIME)
@Target({ElementType.FIELD, ElementType.METHOD})
public @interface Info {
    @Nonbinding
    ConfigPropertyCategory category() default ConfigPropertyCategory.CATEGORY_SYSTEM;

    @Nonbinding
    String description() default "";

    @Nonbinding
    String availableSince() default "";

    @Nonbinding
    String registryAvailableSince() default "";

    @Nonbinding
    String studioAvailableSince() default "";

    @Nonbinding
    String[] seeAlso() default {};

    @Nonbinding
    String[] dependsOn() default {};
}
